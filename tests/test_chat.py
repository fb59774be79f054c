import pytest

from codegemma.chat import chat_prompt
from codegemma.errors import InvalidRequestError


def test_gemma_turn_format():
    messages = [
        {"role": "user", "content": "Hi "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Write code"},
    ]
    assert chat_prompt(messages) == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nWrite code<end_of_turn>\n<start_of_turn>model\n"
    )


def test_system_is_folded_into_first_user_turn():
    prompt = chat_prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}]
    )
    assert prompt == "<start_of_turn>user\nBe brief.\n\nQ<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "non-empty"),
        ([{"role": "assistant", "content": "x"}], "alternate"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only come first"),
        ([{"role": "robot", "content": "a"}], "unknown role"),
        ([{"role": "user", "content": 3}], "content must be a string"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
    ],
)
def test_bad_conversations(messages, message):
    with pytest.raises(InvalidRequestError, match=message):
        chat_prompt(messages)
