"""A DPO pair's prompt through the model once, for both replies.

TRL's preference collator stacks [prompt + chosen; prompt + rejected] as 2B rows, so
every forward (policy, reference, held-out scoring) runs each prompt twice, and an HH
prompt is most of a pair's tokens. Here each pair is one row:

    prompt[:-1] | prompt[-1] chosen | prompt[-1] rejected

with position ids continuing the prompt's in both reply segments and a 4D attention
mask in which a reply segment sees the prompt and its own earlier tokens, never the
other reply. The prompt's last token is repeated at the head of the rejected segment
(same token, same position, same keys: the same hidden state) so that each position
predicts exactly one token, the first reply token of either side included.

The per-token results are scattered back into TRL's [2B, L - 1] layout
(`outputs.log_probs[:, -seq_len:]`), so sums, ld_alpha weighting and every logged
metric downstream are TRL's own code on the same numbers, up to float rounding.
Batches whose two rows of a pair do not share their prompt (truncation keep_end),
and models whose attention cannot take a custom 4D mask, go TRL's own way.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

from alignscope.trl_patches import check_trl

MASKABLE_ATTENTION = ("sdpa", "eager")  # transformers' kernels that take a custom 4D mask as given


@dataclass
class Packed:
    """One row a pair; `source[b, n]`: the flat index into TRL's [2B, L - 1] log-prob layout that
    packed position n predicts (-1: none)."""

    input_ids: object
    position_ids: object
    visible: object  # [B, 1, N, N] bool: query n may attend to key m
    shift_labels: object  # [B, N]: the token position n predicts, -100 where none
    source: object
    first_reply: int  # the first column that predicts a reply token in any row
    out_shape: tuple


def inner_model(model):
    """The causal LM under any DDP or PEFT wrapper."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def takes_4d_mask(model) -> bool:
    """Whether the model's attention takes our 4D mask and position ids as given: transformers' own
    models under sdpa or eager attention, with no prompt-learning PEFT (its virtual tokens widen the mask)."""
    peft_config = getattr(getattr(model, "module", model), "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return False
    inner = inner_model(model)
    config = getattr(inner, "config", None)
    return (type(inner).__module__.startswith("transformers.models.")
            and getattr(config, "_attn_implementation", None) in MASKABLE_ATTENTION
            and "position_ids" in inspect.signature(type(inner).forward).parameters)


def pack(batch, sliding_window: int | None = None) -> Packed | None:
    """The shared-prompt rows of a TRL preference batch (right-padded, rows i and B + i one pair), or
    None where a pair's rows hold different prompts or a sliding window would cut the attention."""
    import torch

    ids, completion = batch["input_ids"], batch["completion_mask"].bool()
    lengths = batch["attention_mask"].sum(1).tolist()
    if sliding_window is not None and max(lengths) > sliding_window:
        return None
    rows, width = ids.shape
    pairs = rows // 2
    starts = [int(c.nonzero()[0]) if c.any() else n for c, n in zip(completion, lengths)]
    segments = []
    for i in range(pairs):
        p = starts[i]
        if p == 0 or p != starts[pairs + i] or not torch.equal(ids[i, :p], ids[pairs + i, :p]):
            return None
        chosen, rejected = ids[i, p:lengths[i]], ids[pairs + i, p:lengths[pairs + i]]
        segments.append((ids[i, :p], chosen, rejected))
    # prompts end at one column, so the replies (the only positions that predict anything) sit at the end
    head = max(len(prompt) - 1 for prompt, _, _ in segments)
    tail = max(len(c) + len(r) + 2 for _, c, r in segments)
    n = head + tail
    input_ids = ids.new_zeros(pairs, n)
    position_ids = ids.new_zeros(pairs, n)
    segment = ids.new_full((pairs, n), -1)  # -1: padding, 0: prompt, 1: chosen, 2: rejected
    shift_labels = ids.new_full((pairs, n), -100)
    source = ids.new_full((pairs, n), -1)
    for i, (prompt, chosen, rejected) in enumerate(segments):
        p = len(prompt)
        left = head - (p - 1)
        input_ids[i, left:head] = prompt[:-1]
        position_ids[i, left:head] = torch.arange(p - 1)
        segment[i, left:head] = 0
        col = head
        for side, (row, reply) in enumerate(((i, chosen), (pairs + i, rejected)), start=1):
            span = slice(col, col + 1 + len(reply))
            input_ids[i, span] = torch.cat([prompt[-1:], reply])
            position_ids[i, span] = torch.arange(p - 1, p + len(reply))
            segment[i, span] = side
            # the segment's j-th token predicts reply[j]; TRL's row puts that prediction at p - 1 + j
            shift_labels[i, col:col + len(reply)] = reply
            source[i, col:col + len(reply)] = row * (width - 1) + torch.arange(p - 1, p - 1 + len(reply))
            col += 1 + len(reply)
    causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
    visible = causal & ((segment[:, :, None] == segment[:, None, :]) | (segment[:, None, :] == 0))
    return Packed(input_ids, position_ids, visible[:, None], shift_labels, source, head, (rows, width - 1))


def attention_mask(packed: Packed, model, dtype):
    """The 4D mask in the form the model's attention adds or applies: boolean for sdpa, additive for eager."""
    import torch

    if inner_model(model).config._attn_implementation == "sdpa":
        return packed.visible
    return torch.zeros(packed.visible.shape, dtype=dtype, device=packed.visible.device).masked_fill(
        ~packed.visible, torch.finfo(dtype).min)


def unpack(packed: Packed, values):
    """Packed per-position values [B, N] in TRL's [2B, L - 1] layout, zero where nothing is predicted."""
    keep = packed.source >= 0
    flat = values.new_zeros(packed.out_shape[0] * packed.out_shape[1])
    return flat.index_put((packed.source[keep],), values[keep]).view(packed.out_shape)


def sliding_window(model) -> int | None:
    config = inner_model(model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(config, "sliding_window", None)


def completion_logps(model, batch):
    """Per-token log-probabilities of each row's reply tokens, as TRL lays them out ([2B, L - 1], zero
    off the replies), each prompt run once; None where the model or batch cannot share prompts.
    Only the reply columns go through the LM head."""
    import torch

    if not takes_4d_mask(model) or (packed := pack(batch, sliding_window(model))) is None:
        return None
    kwargs = dict(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False,
                  attention_mask=attention_mask(packed, model, next(model.parameters()).dtype))
    keep_from = packed.first_reply
    if "logits_to_keep" in inspect.signature(type(inner_model(model)).forward).parameters:
        logits = model(**kwargs, logits_to_keep=packed.input_ids.shape[1] - keep_from).logits
    else:
        logits = model(**kwargs).logits[:, keep_from:]
    labels = packed.shift_labels[:, keep_from:]
    keep = labels != -100
    picked = torch.log_softmax(logits[keep].float(), dim=-1).gather(1, labels[keep].unsqueeze(1)).squeeze(1)
    per_position = torch.zeros(packed.shift_labels.shape, dtype=torch.float32, device=logits.device)
    per_position[:, keep_from:][keep] = picked
    return unpack(packed, per_position)


# --------------------------------------------------------------------------- training

def fused_shared_forward(forward, packed: Packed, model, kwargs: dict):
    """TRL's fused LM head (`forward`, as `add_fused_lm_head` installed it) on the packed rows,
    its per-token outputs put back in the layout of the 2B-row call it replaces."""
    from trl.trainer.utils import FusedCausalLMOutput

    kwargs = {k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask", "position_ids")}
    out = forward(input_ids=packed.input_ids, position_ids=packed.position_ids,
                  attention_mask=attention_mask(packed, model, next(model.parameters()).dtype),
                  shift_labels=packed.shift_labels, fused_lm_head=True, **kwargs)
    fields = {name: None if getattr(out, name) is None else unpack(packed, getattr(out, name))
              for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")}
    # TRL's own loss definition: summed NLL over the labelled tokens (DPO reads only the per-token fields)
    loss = -fields["log_probs"].sum() / fields["label_mask"].sum().clamp(min=1)
    return FusedCausalLMOutput(loss=loss, **fields)


def shared_prompt_trainer(base):
    """`base` (TRL's DPOTrainer or a subclass) whose policy and reference passes share each pair's prompt.

    TRL's `_compute_loss` and `compute_ref_log_probs` run unchanged; the fused forward TRL installed on
    the policy's causal LM and the reference is wrapped so that, for the very batch being scored, it
    runs the packed rows instead. Models that cannot take the mask, MoE router losses (which read the
    2D padding mask) and batches `pack` refuses take TRL's own path."""
    check_trl()

    class Trainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._sharing = None  # (the batch being scored, its packed rows or None)
            for model in (inner_model(self.model), self.ref_model):
                if model is not None and takes_4d_mask(model):
                    model.forward = self._shared(model.forward, model)

        def _shared(self, forward, model):
            def shared_forward(*args, fused_lm_head=False, labels=None, **kwargs):
                if (fused_lm_head and self._sharing is not None and not args and labels is not None
                        and kwargs.get("input_ids") is self._sharing[0]["input_ids"]
                        and not kwargs.get("output_router_logits")):
                    batch, packed = self._sharing
                    if packed is None:
                        packed = pack(batch, sliding_window(model))
                        self._sharing = (batch, packed or False)
                    if packed:
                        return fused_shared_forward(forward, packed, model, kwargs)
                return forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)

            return shared_forward

        @contextlib.contextmanager
        def _sharing_prompts(self, inputs):
            self._sharing = (inputs, None)
            try:
                yield
            finally:
                self._sharing = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with self._sharing_prompts(inputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def compute_ref_log_probs(self, model, inputs):
            with self._sharing_prompts(inputs):
                return super().compute_ref_log_probs(model, inputs)

    Trainer.__name__ = Trainer.__qualname__ = f"SharedPrompt{base.__name__}"
    return Trainer
