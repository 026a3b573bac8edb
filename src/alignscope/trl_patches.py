"""Every place alignscope reaches into TRL internals, in one file.

(Two places lean on transformers beyond its documented use, each with its own test:
`kv_cache` subclasses its cache layers to merge and shrink batches in place, and
`models.convert_gguf` drops a GGUF model's quantizer. transformers is held to one
major version, 5.)

1. `compact_lm_head`: TRL's fused LM-head loss projects only labelled positions
   on Triton devices and every position elsewhere; we let it compact on the CPU
   too, by swapping `trl.trainer.utils._use_triton` for the run.
2. `resumable`: a trainer class whose length-grouped sampler is reseeded from
   (seed, epoch), so a resumed run replays the order of one never stopped, and
   which keeps a `length` column for that sampler.

These rely on names TRL does not promise to keep. `check_trl()` fails loudly when
they are gone (tests/test_trl_patches.py runs it and the behaviour behind each
patch); pyproject.toml allows only the TRL versions those tests cover.
"""

from __future__ import annotations

import contextlib
import functools

TESTED_TRL = ("1.16",)  # major.minor releases tests/test_trl_patches.py has passed on


class TRLChanged(RuntimeError):
    pass


def check_trl() -> None:
    """Raise if an internal the patches below rely on is gone or changed shape."""
    import inspect

    import trl
    import trl.trainer.utils as trl_utils
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from trl.trainer.dpo_trainer import DPOTrainer

    problems = []
    for name in ("compute_loss", "compute_ref_log_probs"):
        if not callable(getattr(DPOTrainer, name, None)):
            problems.append(f"DPOTrainer.{name} is gone (shared_prompt_trainer overrides it)")
    if (not hasattr(trl_utils, "FusedCausalLMOutput")
            or "shift_labels" not in inspect.signature(trl_utils.add_fused_lm_head).parameters
            and "shift_labels" not in inspect.getsource(trl_utils.add_fused_lm_head)):
        problems.append("TRL's fused LM head no longer takes shift_labels (shared_prompt scores packed rows with it)")
    if not callable(getattr(trl_utils, "_use_triton", None)):
        problems.append("trl.trainer.utils._use_triton is gone (compact_lm_head patches it)")
    for name in ("_get_train_sampler", "_set_signature_columns_if_needed"):
        if not callable(getattr(Trainer, name, None)):
            problems.append(f"transformers.Trainer.{name} is gone (resumable overrides it)")
    if "lengths" not in inspect.signature(LengthGroupedSampler.__init__).parameters:
        problems.append("LengthGroupedSampler no longer takes lengths=")
    if problems:
        raise TRLChanged(f"trl {trl.__version__} (alignscope is tested on {', '.join(TESTED_TRL)}): "
                         + "; ".join(problems))


@contextlib.contextmanager
def compact_lm_head(enabled: bool):
    """On a CPU, project through the LM head only the positions that carry a label.

    TRL keeps every position off Triton devices to keep shapes fixed for compilers
    like Neuron's; on a CPU the compaction is pure gain: an HH prompt is most of its
    tokens, and Gemma's 262k-word head is most of its FLOPs. The projection itself is
    TRL's own, in fp32."""
    if not enabled:
        yield
        return
    check_trl()
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def resumable(base):
    """`base` (a TRL trainer class) with a length-grouped sampler that a resumed run replays exactly.

    transformers' LengthGroupedSampler draws each epoch's order from the global RNG,
    so a run resumed mid-training sees a different order than one never stopped.
    Reseeding it from (seed, epoch), as accelerate does for random samplers, fixes that."""
    check_trl()
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class Trainer(base):
        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, LengthGroupedSampler):
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                return epoch_seeded_length_sampler()(sampler.batch_size, sampler.lengths, seed)
            return sampler

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()  # keep `length` for the sampler; collators ignore it
            if self._signature_columns is not None and "length" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "length"]

    Trainer.__name__ = Trainer.__qualname__ = f"Resumable{base.__name__}"
    return Trainer


@functools.cache
def epoch_seeded_length_sampler():
    """The sampler class, built on first use: transformers is imported only by runs that train."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthSampler(LengthGroupedSampler):
        def __init__(self, batch_size: int, lengths: list[int], seed: int):
            super().__init__(batch_size, lengths=lengths)
            self.seed = seed
            self.set_epoch(0)

        def set_epoch(self, epoch: int) -> None:  # called by accelerate at each epoch
            self.generator = torch.Generator().manual_seed(self.seed + epoch)

    return EpochSeededLengthSampler
