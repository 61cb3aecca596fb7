"""ComfyUI's attention modules in LoRA files: q/k/v fused into one ``attention.qkv`` and ``to_out.0`` named
``attention.out`` (its Z-Image model has a fused qkv weight; its bypass loader patches whole weights only)."""

from __future__ import annotations

from zlora.lora.modules import LoraModule


def fuse(modules: dict[str, LoraModule]) -> dict[str, LoraModule]:
    """q/k/v -> one ``attention.qkv`` module: A stacked (3r, in), B block-diagonal (3 out, 3r). Exact when the three
    share rank and alpha (then fused alpha = 3 alpha keeps alpha/rank); otherwise the scales are folded into B.
    A member without a LoRA takes a zero one (zero delta), since ComfyUI has only the fused weight to patch."""
    import torch

    out: dict[str, LoraModule] = {}
    for name, m in modules.items():
        if name.endswith(".attention.to_out.0"):
            out[name.removesuffix("to_out.0") + "out"] = m
        elif not name.endswith((".attention.to_q", ".attention.to_k", ".attention.to_v")):
            out[name] = m
    qkv = [n for n in modules if n.endswith((".to_q", ".to_k", ".to_v")) and ".attention." in n]
    for stem in sorted({n.rsplit(".", 1)[0] + "." for n in qkv}):
        trio = [modules.get(stem + s) for s in ("to_q", "to_k", "to_v")]
        some = next(t for t in trio if t is not None)
        zero = LoraModule(torch.zeros_like(some.A), torch.zeros_like(some.B), some.alpha)
        trio = [t if t is not None else zero for t in trio]
        same = len({(t.rank, t.alpha) for t in trio}) == 1
        Bs = [t.B if same else t.B * t.scale for t in trio]
        A = torch.cat([t.A for t in trio], dim=0)
        B = torch.block_diag(*Bs)
        alpha = (3 * trio[0].alpha if trio[0].alpha is not None else None) if same else float(A.shape[0])
        out[stem + "qkv"] = LoraModule(A, B, alpha)
    return out


def unfuse(modules: dict[str, LoraModule]) -> dict[str, LoraModule]:
    import torch

    out: dict[str, LoraModule] = {}
    for name, m in modules.items():
        if name.endswith(".attention.out"):
            out[name.removesuffix("out") + "to_out.0"] = m
        elif name.endswith(".attention.qkv"):
            stem = name.removesuffix("qkv")
            out_dim, rank = m.B.shape[0] // 3, m.rank
            r = rank // 3
            blocks = [m.B[i * out_dim : (i + 1) * out_dim] for i in range(3)]
            diagonal = rank % 3 == 0 and all(
                torch.count_nonzero(blocks[i][:, : j * r]) == 0
                and torch.count_nonzero(blocks[i][:, (j + 1) * r :]) == 0
                for i, j in ((0, 0), (1, 1), (2, 2))
            )
            for i, comp in enumerate(("to_q", "to_k", "to_v")):
                if diagonal:  # a fused copy of three separate LoRAs: split exactly, rank r each
                    alpha = m.alpha / 3 if m.alpha is not None else None
                    out[stem + comp] = LoraModule(
                        m.A[i * r : (i + 1) * r], blocks[i][:, i * r : (i + 1) * r], alpha
                    )
                else:  # trained fused: each part keeps the full A (rank 3r); same delta, more parameters
                    out[stem + comp] = LoraModule(m.A, blocks[i], m.alpha)
        else:
            out[name] = m
    return out
