"""Gemma tokenizer: encode and decode exactly as transformers' ``GemmaTokenizer`` does.

Two file formats are supported: SentencePiece's ``tokenizer.model`` and the Hugging Face
``tokenizer.json``. Either way the observable behaviour is the one transformers has:

* Encoding first splits the text on every added token (control pieces such as ``<eos>`` and
  user-defined ones such as ``<|fim_prefix|>``), taking the leftmost, then longest, match;
  each match becomes its own id, the text between is BPE-encoded. SentencePiece on its own
  would spell ``<eos>`` out as ordinary characters, hence the split. BOS is prepended.
* Decoding maps every id to its piece text (``▁`` becomes a space; control tokens come out
  literally, e.g. ``"<eos>"``), except that each maximal run of byte-fallback tokens
  (``<0x..>``) is decoded as UTF-8 as a whole: if the run is not valid UTF-8, *every* byte in
  it becomes U+FFFD. ``skip_special_tokens`` drops only the tokens transformers marks special
  (control pieces and ``<mask>``; not the FIM or turn tokens) before that step.
"""

from __future__ import annotations

import json
import operator
import re
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from codegemma.errors import CodeGemmaError

MODEL_FILE = "tokenizer.model"
JSON_FILE = "tokenizer.json"

# transformers' GemmaTokenizer registers these as special tokens whatever the file says, so
# they are dropped by skip_special_tokens even when the .model has them as user-defined.
_NAMED_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")

# The decoder every Gemma tokenizer.json carries; decode() below implements exactly this.
_GEMMA_DECODER = {
    "type": "Sequence",
    "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ],
}

_HEX = frozenset("0123456789abcdefABCDEF")


class TokenizerError(CodeGemmaError, ValueError):
    """A tokenizer file that cannot be used, or input the tokenizer cannot handle."""


class Tokenizer:
    """A loaded Gemma tokenizer. Build one with :meth:`from_dir` or :meth:`from_file`."""

    def __init__(
        self,
        *,
        tokens: Iterable[str | None] | PieceTable,
        added: dict[str, int],
        skippable: frozenset[int],
        encode_text: Callable[[str], list[int]],
        source: Path,
    ) -> None:
        # tokens[i] is the raw piece text of id i (None for a hole in the id space); added
        # maps the text of each whole-match token to its id; encode_text turns non-empty
        # valid text into ids without BOS.
        self._pieces = tokens if isinstance(tokens, PieceTable) else PieceTable(tokens)
        self._added = added
        self._ids: dict[str, int] | None = None  # text -> id, built on the first lookup
        self._skippable = skippable
        self._encode_text = encode_text
        self._source = source
        self._bytes = self._pieces.byte_pieces()  # id -> byte of <0x00> .. <0xFF>
        self.bos_id = self._required("<bos>")
        self.eos_id = self._required("<eos>")
        self.pad_id = self._required("<pad>")

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.model`` from directory ``path``, or ``tokenizer.json`` if absent."""
        directory = Path(path)
        if not directory.is_dir():
            raise TokenizerError(f"tokenizer directory {str(directory)!r} does not exist")
        for name in (MODEL_FILE, JSON_FILE):
            if (directory / name).is_file():
                return cls.from_file(directory / name)
        raise TokenizerError(
            f"no tokenizer found in {str(directory)!r}: looked for {MODEL_FILE!r} "
            f"(SentencePiece) and {JSON_FILE!r} (Hugging Face tokenizers)"
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a SentencePiece ``.model`` or a Hugging Face ``tokenizer.json`` file."""
        file = Path(path)
        if not file.is_file():
            raise TokenizerError(f"tokenizer file {str(file)!r} does not exist")
        if _looks_like_json(file):
            return _load_json(file)
        return _load_sentencepiece(file)

    @classmethod
    def from_sentencepiece_bytes(cls, data: bytes, source: str | Path) -> Tokenizer:
        """Load a serialized SentencePiece model held in memory (e.g. rebuilt from GGUF
        metadata); ``source`` is the file it came from, named in messages and ``path``."""
        return _load_sentencepiece_bytes(data, Path(source))

    def _required(self, text: str) -> int:
        token = self.token_id(text)
        if token is None:
            raise TokenizerError(
                f"{str(self._source)!r} has no {text} token; not a Gemma tokenizer"
            )
        return token

    # ------------------------------------------------------------------------- vocabulary

    @property
    def path(self) -> Path:
        """The file this tokenizer was loaded from."""
        return self._source

    @property
    def vocab_size(self) -> int:
        """Number of ids, i.e. one more than the largest valid id."""
        return len(self._pieces)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of control and user-defined tokens: those matched whole inside text."""
        return frozenset(self._added.values())

    @property
    def skippable_ids(self) -> frozenset[int]:
        """Ids that ``decode(..., skip_special_tokens=True)`` leaves out."""
        return self._skippable

    def token_id(self, text: str) -> int | None:
        """Id of the token whose piece text is exactly ``text`` (e.g. ``"<|fim_prefix|>"``)."""
        found = self._added.get(text)
        if found is not None:
            return found
        if self._ids is None:
            self._ids = self._pieces.index()
        return self._ids.get(text)

    def id_to_piece(self, token_id: int) -> str:
        """Raw piece text of ``token_id``, e.g. ``"▁return"``, ``"<0x0A>"`` or ``"<eos>"``."""
        return self._piece(self._checked_id(token_id))

    def byte_value(self, token_id: int) -> int | None:
        """The byte a byte-fallback token (``<0x..>``) stands for; None for other tokens."""
        return self._bytes.get(self._checked_id(token_id))

    # --------------------------------------------------------------------- encode / decode

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``, with BOS first unless ``add_bos`` is False. EOS is never added."""
        _check_text(text)
        ids = [self.bos_id] if add_bos else []
        if text:
            ids.extend(self._encode_text(text))
        return ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``. ``skip_special_tokens`` leaves out :attr:`skippable_ids`."""
        parts: list[str] = []
        run = bytearray()
        for token in _as_id_list(ids):
            token = self._checked_id(token)
            if skip_special_tokens and token in self._skippable:
                # Dropped before byte runs are formed, so bytes on both sides join up.
                continue
            byte = self._bytes.get(token)
            if byte is not None:
                run.append(byte)
                continue
            if run:
                parts.append(decode_byte_run(run))
                run.clear()
            parts.append(self._piece(token).replace("\u2581", " "))
        if run:
            parts.append(decode_byte_run(run))
        return "".join(parts)

    def byte_lengths(self, ids: Iterable[int]) -> list[int]:
        """How many bytes of UTF-8 text each token decodes to (a byte-fallback token: one),
        so that the tokens of `encode(text, add_bos=False)` can be mapped back onto `text`."""
        lengths = []
        for token in _as_id_list(ids):
            token = self._checked_id(token)
            if token in self._bytes:
                lengths.append(1)
            else:
                lengths.append(len(self._piece(token).replace("\u2581", " ").encode("utf-8")))
        return lengths

    # ----------------------------------------------------------------------------- helpers

    def _piece(self, token_id: int) -> str:
        piece = self._pieces[token_id]
        assert piece is not None  # _checked_id rejects holes
        return piece

    def _checked_id(self, token_id: object) -> int:
        try:
            index = operator.index(token_id)  # type: ignore[arg-type]
        except TypeError:
            raise TokenizerError(
                f"token ids must be integers, got {type(token_id).__name__}"
            ) from None
        if not 0 <= index < len(self._pieces) or self._pieces.is_hole(index):
            raise TokenizerError(
                f"token id {index} is outside the vocabulary (size {self.vocab_size})"
            )
        return index

    def __repr__(self) -> str:
        return f"Tokenizer({str(self._source)!r}, vocab_size={self.vocab_size})"


class PieceTable:
    """The piece text of every id, kept as one UTF-8 buffer and its offsets: a 256000-piece
    vocabulary as a list of Python strings (plus a text -> id dict) takes some 40 MB.
    Built in one pass over any iterable, so the pieces never all exist as objects at once."""

    def __init__(self, tokens: Iterable[str | None]) -> None:
        data = bytearray()
        self._offsets = array("q", [0])
        holes = []
        for index, token in enumerate(tokens):
            if token is None:
                holes.append(index)
            else:
                data += token.encode("utf-8")
            self._offsets.append(len(data))
        self._data = bytes(data)
        self._holes = frozenset(holes)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str | None:
        if index in self._holes:
            return None
        return self._data[self._offsets[index] : self._offsets[index + 1]].decode("utf-8")

    def is_hole(self, index: int) -> bool:
        return index in self._holes

    def index(self) -> dict[str, int]:
        """Text -> id of every piece (the last id where a text repeats)."""
        return {piece: i for i in range(len(self)) if (piece := self[i]) is not None}

    def byte_pieces(self) -> dict[int, int]:
        """Id -> byte of every byte-fallback piece (six bytes long, like ``<0x0A>``)."""
        found = {}
        for i in range(len(self)):
            if self._offsets[i + 1] - self._offsets[i] == 6 and i not in self._holes:
                byte = _byte_value(self[i])  # type: ignore[arg-type]  # not a hole
                if byte is not None:
                    found[i] = byte
        return found


def decode_byte_run(run: bytes | bytearray) -> str:
    """Decode a maximal run of byte-fallback bytes the way ``tokenizers`` does.

    A valid UTF-8 run becomes its text; any other run becomes one U+FFFD per byte (not per
    bad sequence, which is what Python's ``errors="replace"`` would give).
    """
    try:
        return run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(run)


def _byte_value(token: str) -> int | None:
    # Same test as the `tokenizers` ByteFallback decoder: six characters, "<0x", two hex
    # digits, ">". Rust's u8::from_str_radix also accepts a leading "+", so "<0x+A>" counts.
    if len(token) != 6 or not token.startswith("<0x") or not token.endswith(">"):
        return None
    digits = token[3:5]
    if all(c in _HEX for c in digits) or (digits[0] == "+" and digits[1] in _HEX):
        return int(digits, 16)
    return None


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise TokenizerError(f"text to encode must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TokenizerError(
            f"text is not valid Unicode: {exc.reason} at index {exc.start} "
            f"({text[exc.start : exc.end]!r}); lone surrogates cannot be tokenized"
        ) from None


def _as_id_list(ids: object) -> list[object]:
    if hasattr(ids, "tolist"):  # numpy arrays and torch tensors: one conversion, not per item
        ids = ids.tolist()  # type: ignore[union-attr]
    if isinstance(ids, int):
        return [ids]
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise TokenizerError(f"ids to decode must be a sequence of ints, got {type(ids).__name__}")
    return list(ids)


def _looks_like_json(file: Path) -> bool:
    if file.suffix == ".json":
        return True
    if file.suffix == ".model":
        return False
    with file.open("rb") as handle:
        return handle.read(64).lstrip().startswith(b"{")


# ---------------------------------------------------------------------------------- loaders


def _load_sentencepiece(file: Path) -> Tokenizer:
    return _load_sentencepiece_bytes(file.read_bytes(), file)


def _load_sentencepiece_bytes(data: bytes, file: Path) -> Tokenizer:
    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise TokenizerError(f"{str(file)!r} is not a valid SentencePiece model: {exc}") from exc
    if not proto.pieces:
        raise TokenizerError(f"{str(file)!r} is not a valid SentencePiece model: no pieces")
    spec = proto.normalizer_spec
    if spec.add_dummy_prefix or spec.remove_extra_whitespaces:
        # transformers' GemmaTokenizer ignores these settings, SentencePiece applies them: the
        # two would disagree, so such a model is not one we can tokenize faithfully.
        raise TokenizerError(
            f"{str(file)!r} adds a dummy prefix or collapses whitespace; not a Gemma tokenizer"
        )
    kind = model_pb2.ModelProto.SentencePiece
    added: dict[str, int] = {}
    skippable: set[int] = set()
    for index, piece in enumerate(proto.pieces):
        if piece.type in (kind.CONTROL, kind.UNKNOWN):
            skippable.add(index)
        if piece.type in (kind.CONTROL, kind.UNKNOWN, kind.USER_DEFINED):
            added.setdefault(piece.piece, index)
    for text in _NAMED_SPECIAL_TOKENS:
        if text in added:
            skippable.add(added[text])
    pieces = PieceTable(piece.piece for piece in proto.pieces)
    del proto  # before SentencePiece's own tables are built: ~13 MB less held for good
    try:
        processor = spm.SentencePieceProcessor(model_proto=data)
    except Exception as exc:  # SentencePiece's RuntimeError/OSError
        raise TokenizerError(f"{str(file)!r} is not a valid SentencePiece model: {exc}") from exc
    return Tokenizer(
        tokens=pieces,
        added=added,
        skippable=frozenset(skippable),
        encode_text=_split_encoder(processor.encode, added),
        source=file,
    )


def _split_encoder(
    encode_plain: Callable[[list[str]], list[list[int]]], added: dict[str, int]
) -> Callable[[str], list[int]]:
    """Wrap a plain BPE encoder so that added tokens in the text come out as single ids.

    This is what `tokenizers` does before BPE: split on every added token, taking the leftmost
    and then longest match, and encode only the text between them.
    """
    # Longest first, so at any one position the regex takes the longest token.
    ordered = sorted((text for text in added if text), key=len, reverse=True)
    splitter = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def encode_text(text: str) -> list[int]:
        if splitter is None:
            return encode_plain([text])[0]
        # Plain-text segments are encoded in one batch call; added tokens are ids already.
        segments: list[str | int] = []
        position = 0
        for match in splitter.finditer(text):
            if match.start() > position:
                segments.append(text[position : match.start()])
            segments.append(added[match.group()])
            position = match.end()
        if position < len(text):
            segments.append(text[position:])
        plain = iter(encode_plain([s for s in segments if isinstance(s, str)]))
        ids: list[int] = []
        for segment in segments:
            if isinstance(segment, int):
                ids.append(segment)
            else:
                ids.extend(next(plain))
        return ids

    return encode_text


def _load_json(file: Path) -> Tokenizer:
    try:
        # deferred: importing tokenizers takes 0.2 s, and only tokenizer.json files need it
        from tokenizers import Tokenizer as HFTokenizer

        backend = HFTokenizer.from_file(str(file))
    except Exception as exc:  # the Rust side raises plain Exception for any parse failure
        raise TokenizerError(f"{str(file)!r} is not a valid tokenizer.json: {exc}") from exc
    decoder = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else None
    if decoder != _GEMMA_DECODER:
        raise TokenizerError(
            f"{str(file)!r} is not a Gemma tokenizer.json: its decoder is {decoder!r}, expected "
            "Replace('\u2581', ' ') + ByteFallback + Fuse"
        )
    vocab = backend.get_vocab(with_added_tokens=True)
    tokens: list[str | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for text, index in vocab.items():
        tokens[index] = text
    added: dict[str, int] = {}
    skippable: set[int] = set()
    for index, token in sorted(backend.get_added_tokens_decoder().items()):
        # Added tokens take precedence over the model vocabulary when ids are turned into text.
        tokens[index] = token.content
        added.setdefault(token.content, index)
        if token.special:
            skippable.add(index)

    def encode_text(text: str) -> list[int]:
        # The full `tokenizers` pipeline, added-token splitting included, minus the
        # post-processor: BOS is added (or not) by Tokenizer.encode.
        return backend.encode(text, add_special_tokens=False).ids

    return Tokenizer(
        tokens=tokens,
        added=added,
        skippable=frozenset(skippable),
        encode_text=encode_text,
        source=file,
    )
