"""The packaged GGUF models' conversion."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_a_gguf_file_is_parsed_once_and_every_reader_gets_what_it_would_have_parsed():
    import gguf
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    from alignscope.models import PACKAGED, gguf_parsed_once

    folder, name = PACKAGED["smollm2-135m-instruct"].locate()
    path = folder / name
    fresh = hf_gguf.load_gguf_checkpoint(path, return_tensors=False)
    originals = (gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint)
    with gguf_parsed_once():
        assert gguf.GGUFReader(path) is gguf.GGUFReader(str(path))
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30)
        first = hf_gguf.load_gguf_checkpoint(path, return_tensors=False)
        first["config"]["num_hidden_layers"] = -1  # a caller editing its copy ...
        first["tokenizer"]["tokens"].append("<mine>")
        again = hf_gguf.load_gguf_checkpoint(path, return_tensors=False)  # ... leaves the next caller's alone
    assert again == fresh and again["config"]["num_hidden_layers"] == 30
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint) == originals
