import pytest

from tests.conftest import tiny_model, tiny_tokenizer


@pytest.fixture
def model_dir(tmp_path):
    """A tiny random model and tokenizer saved as a Hugging Face directory."""
    path = tmp_path / "tiny"
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
