"""FIM prompts must be exactly those the seed documents print."""

import pytest

from codegemma.fim import ContextFile, cut_at_stop, fim_prompt, reassemble

# (before, after, prompt) copied from the seed documents' printed output.
SEED_EXAMPLES = [
    (
        "import ",
        'if __name__ == "__main__":\n    sys.exit(0)',
        '<|fim_prefix|>import <|fim_suffix|>if __name__ == "__main__":\n    sys.exit(0)<|fim_middle|>',
    ),
    (
        "def function(string):\n",
        "assert function('asdf') == 'fdsa'",
        "<|fim_prefix|>def function(string):\n<|fim_suffix|>assert function('asdf') == 'fdsa'<|fim_middle|>",
    ),
    (
        "import numpy as np\ndef reflect(matrix):\n # horizontally reflect a matrix\n",
        "",
        "<|fim_prefix|>import numpy as np\ndef reflect(matrix):\n # horizontally reflect a matrix\n<|fim_suffix|><|fim_middle|>",
    ),
    (
        "\ndef print_multiplication_table():\n    for i in range(1, 10):\n",
        '\nif __name__ == "__main__":\n    print_multiplication_table()\n',
        "<|fim_prefix|>\ndef print_multiplication_table():\n    for i in range(1, 10):\n<|fim_suffix|>\n"
        'if __name__ == "__main__":\n    print_multiplication_table()\n<|fim_middle|>',
    ),
    (
        'import datetime\ndef calculate_age(birth_year):\n    """Calculates a person\'s age based on their'
        ' birth year."""\n    current_year = datetime.date.today().year\n    ',
        "\n    return age",
        '<|fim_prefix|>import datetime\ndef calculate_age(birth_year):\n    """Calculates a person\'s age'
        ' based on their birth year."""\n    current_year = datetime.date.today().year\n    '
        "<|fim_suffix|>\n    return age<|fim_middle|>",
    ),
]


@pytest.mark.parametrize("before, after, expected", SEED_EXAMPLES)
def test_seed_prompts(before, after, expected):
    assert fim_prompt(before, after, mode="psm") == expected  # the seeds are in PSM order


def test_spm_puts_the_suffix_first_so_typing_extends_the_end():
    assert fim_prompt("ab", "cd", mode="spm") == "<|fim_suffix|>cd<|fim_prefix|>ab<|fim_middle|>"
    one, two = fim_prompt("ab", "cd", mode="spm"), fim_prompt("abx", "cd", mode="spm")
    assert two.startswith(one.removesuffix("<|fim_middle|>"))


def test_multi_file_context_comes_first_with_paths():
    prompt = fim_prompt(
        "x = ",
        "",
        files=[ContextFile("a.py", "A = 1\n"), ("b.py", "B = 2\n")],
        path="c.py",
        mode="psm",
    )
    assert prompt == (
        "a.py\nA = 1\n<|file_separator|>b.py\nB = 2\n<|file_separator|>"
        "c.py\n<|fim_prefix|>x = <|fim_suffix|><|fim_middle|>"
    )


def test_unknown_mode():
    with pytest.raises(ValueError, match="psm"):
        fim_prompt("a", "b", mode="pms")


# Raw generations printed by the seeds, and the middle a user must get from them.
@pytest.mark.parametrize(
    "raw, middle",
    [
        ("sys\n<|file_separator|>", "sys\n"),
        (" return string[::-1]\n\n<|file_separator|>", " return string[::-1]\n\n"),
        (
            "age = current_year - birth_year<|file_separator|>test_calculate_age.py\n<|fim_suffix|>\n"
            "    assert calculate_age(1990) == 33",
            "age = current_year - birth_year",
        ),
        ("a<|fim_middle|>b<eos>", "a"),
        ("no stop at all", "no stop at all"),
    ],
)
def test_cut_at_stop(raw, middle):
    assert cut_at_stop(raw) == middle


def test_reassemble_seed_example():
    before, after = "def function(string):\n", "assert function('asdf') == 'fdsa'"
    whole = reassemble(before, " return string[::-1]\n\n<|file_separator|>", after)
    assert (
        whole == "def function(string):\n return string[::-1]\n\nassert function('asdf') == 'fdsa'"
    )
