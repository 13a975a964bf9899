"""Runs the model on a packed batch: prefill chunks and decode tokens in one forward."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ted_sglang.engine.attention import (
    ATTENTION_NAME,
    AttentionBackend,
    Segment,
    SequenceKV,
    active_backend,
    register_attention,
)
from ted_sglang.engine.decode_groups import JoinedChains

if TYPE_CHECKING:
    import torch

    from ted_sglang.engine.model_loader import LoadedModel


@dataclass
class ForwardInput:
    """A packed batch: tokens of every segment back to back, and which rows need logits."""

    segments: list[Segment] = field(default_factory=list)
    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    logit_rows: list[int] = field(default_factory=list)
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    capture_hidden: bool = False  # keep the last layer's output (after the final norm)
    hidden_states: torch.Tensor | None = None  # ``[num_tokens, hidden]`` float32, on the CPU

    def add(self, kv: SequenceKV, token_ids: list[int], start: int) -> Segment:
        seg = Segment(kv, start, len(token_ids), len(self.input_ids))
        self.segments.append(seg)
        self.input_ids.extend(token_ids)
        self.positions.extend(range(start, start + len(token_ids)))
        return seg

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


class ModelRunner:
    """Owns the model, allocates request KV, runs packed forwards through the engine's attention."""

    def __init__(self, loaded: LoadedModel, backend_cls: type[AttentionBackend] = AttentionBackend):
        import torch

        self.model = loaded.model
        self.backend_cls = backend_cls
        self.shares_prefix_kv = backend_cls.shares_prefix_kv
        self.joined_chains = JoinedChains()  # multi-node prefixes read as one, across steps
        text_config = self.model.config.get_text_config()
        self.num_layers = int(text_config.num_hidden_layers)
        self.num_kv_heads = int(
            getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
        )
        self.head_dim = int(
            getattr(text_config, "head_dim", None)
            or text_config.hidden_size // text_config.num_attention_heads
        )
        self.dtype = next(self.model.parameters()).dtype
        self.device = torch.device(loaded.device)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        register_attention()
        text_config._attn_implementation = ATTENTION_NAME
        self._check_routing()

    def new_kv(self, capacity: int) -> SequenceKV:
        return SequenceKV(
            self.num_layers, self.num_kv_heads, self.head_dim, capacity, self.dtype, self.device
        )

    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    def forward(self, batch: ForwardInput) -> torch.Tensor:
        """Run the batch; returns float32 logits ``[len(batch.logit_rows), vocab]``."""
        import torch

        device = self.device
        input_ids = torch.tensor([batch.input_ids], dtype=torch.long, device=device)
        positions = torch.tensor([batch.positions], dtype=torch.long, device=device)
        rows = torch.tensor(batch.logit_rows, dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {}
        if batch.pixel_values:
            kwargs["pixel_values"] = torch.cat(batch.pixel_values).to(device, self.dtype)
        backend = self.backend_cls(batch.segments, self.joined_chains)
        hook = None
        if batch.capture_hidden:

            def keep(module: Any, args: Any, output: Any) -> None:
                batch.hidden_states = output.last_hidden_state[0].float().cpu()

            hook = self.model.get_decoder().register_forward_hook(keep)
        try:
            with torch.inference_mode(), active_backend(backend):
                out = self.model(
                    input_ids=input_ids,
                    position_ids=positions,
                    use_cache=False,
                    logits_to_keep=rows,
                    **kwargs,
                )
        finally:
            if hook is not None:
                hook.remove()
        for seg in batch.segments:
            seg.kv.length = max(seg.kv.length, seg.start + seg.num_tokens)
        return out.logits[0].float()

    def _check_routing(self) -> None:
        """Fail loudly if the model's attention does not go through the engine's backend."""
        calls: list[int] = []

        class Counting(self.backend_cls):  # type: ignore[misc,name-defined]
            def forward(self, layer, *args, **kwargs):  # type: ignore[no-untyped-def]
                calls.append(layer)
                return super().forward(layer, *args, **kwargs)

        batch = ForwardInput()
        batch.add(self.new_kv(2), [0, 0], 0)
        batch.logit_rows = [1]
        saved, self.backend_cls = self.backend_cls, Counting
        try:
            self.forward(batch)
        finally:
            self.backend_cls = saved
        if sorted(calls) != list(range(self.num_layers)):
            raise RuntimeError(
                f"{type(self.model).__name__} does not route attention through "
                "transformers' AttentionInterface; the engine cannot serve it"
            )
