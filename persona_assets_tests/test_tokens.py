"""The token rule's character class: the packaged table equals Python's own ``str`` methods."""

from persona_assets.contract.tokens import _token_char_ranges, compute_token_char_ranges, tokenize


def test_packaged_token_ranges_equal_pythons_str_methods():
    assert _token_char_ranges() == compute_token_char_ranges()


def test_tokens_are_runs_of_letters_and_digits_lower_cased():
    assert tokenize("Home Centre sofa_bed T-Shirt x²y ①") == ["home", "centre", "sofa", "bed", "t", "shirt", "x²y", "①"]
