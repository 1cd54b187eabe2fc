"""Structure arithmetic of a HiFi-GAN generator config (no torch): its cost model and the channel groups that
move together under structured pruning. Re-exported by :mod:`edgeflow.models.hifigan`."""

from __future__ import annotations

from typing import Dict, List


def decoder_flops_per_frame(dec) -> float:
    """HiFi-GAN generator FLOPs per input frame (``dec`` a GeneratorConfig; per-stage and inner widths counted;
    an inverse-STFT head: its conv_post and inverse-DFT matmul)."""
    ch, nk = dec.widths(), len(dec.resblock_kernel_sizes)
    total, rate = 2.0 * dec.in_channels * ch[0] * 7, 1
    for i, (u, k) in enumerate(zip(dec.upsample_rates, dec.upsample_kernel_sizes)):
        c_in, c_out = ch[i], ch[i + 1]
        total += 2.0 * rate * c_in * c_out * k
        rate *= u
        for j, (k_r, d_r) in enumerate(zip(dec.resblock_kernel_sizes, dec.resblock_dilation_sizes)):
            if dec.resblock == "1":
                total += sum(2.0 * rate * 2 * c_out * c * k_r for c in dec.inner_widths(i * nk + j))
            else:
                total += 2.0 * rate * len(d_r) * c_out * c_out * k_r
    post = 2.0 * rate * ch[-1] * 7 * dec.post_channels
    if dec.istft_hop:                                   # the inverse-DFT matmul: n_fft x (n_fft + 2) per step
        post += 2.0 * rate * dec.istft_n_fft * (dec.istft_n_fft + 2)
    return total + post


def channel_groups(dec) -> List[Dict[str, object]]:
    """The generator's channel groups that move together under structured pruning (``dec`` a GeneratorConfig).

    Each group is ``{"name", "width", "writers", "readers"}``: the module names (as in ``Generator``'s state
    dict) whose output channels are the group (writers) and whose input channels read it (readers). Groups:
    ``pre`` (conv_pre and cond out, ups.0 in); ``stage{i}`` (ups.i out, every conv of the stage's resblocks in
    and out, ups.{i+1} or conv_post in); resblock "1": ``inner{b}.{j}`` (resblocks.b.convs1.j out,
    resblocks.b.convs2.j in).
    """
    ch, nk, n = dec.widths(), len(dec.resblock_kernel_sizes), len(dec.upsample_rates)
    groups: List[Dict[str, object]] = [{"name": "pre", "width": ch[0], "readers": ["ups.0"],
                                        "writers": ["conv_pre"] + (["cond"] if dec.gin_channels else [])}]
    for i in range(n):
        writes, reads, inner = [f"ups.{i}"], [], []
        for b in range(i * nk, (i + 1) * nk):
            pairs = range(len(dec.resblock_dilation_sizes[b % nk]))
            if dec.resblock == "1":
                writes += [f"resblocks.{b}.convs2.{j}" for j in pairs]
                reads += [f"resblocks.{b}.convs1.{j}" for j in pairs]
                inner += [{"name": f"inner{b}.{j}", "width": dec.inner_widths(b)[j],
                           "writers": [f"resblocks.{b}.convs1.{j}"], "readers": [f"resblocks.{b}.convs2.{j}"]}
                          for j in pairs]
            else:
                writes += [f"resblocks.{b}.convs.{j}" for j in pairs]
                reads += [f"resblocks.{b}.convs.{j}" for j in pairs]
        reads.append(f"ups.{i + 1}" if i + 1 < n else "conv_post")
        groups.append({"name": f"stage{i}", "width": ch[i + 1], "writers": writes, "readers": reads})
        groups += inner
    return groups
