"""Independent references for tests/test_import_vocoders.py: the official HiFi-GAN generator and NVIDIA WaveGlow
inference read straight from the public code (plain tensors), and module objects of classes named like NVIDIA's
``glow`` module for writing original-layout WaveGlow files."""

from __future__ import annotations

import sys
import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.models.importers.waveglow import nvidia_state_dict


def split_cond_layers(sd, c):
    """The per-layer ``cond_layers.i`` of DeepLearningExamples / glow_old.py from a merged ``cond_layer`` (in place)."""
    for k in range(c.n_flows):
        g, v, b = (sd.pop(f"WN.{k}.cond_layer.{s}") for s in ("weight_g", "weight_v", "bias"))
        for i in range(c.wn_layers):
            rows = slice(i * 2 * c.wn_channels, (i + 1) * 2 * c.wn_channels)
            sd.update({f"WN.{k}.cond_layers.{i}.weight_g": g[rows], f"WN.{k}.cond_layers.{i}.weight_v": v[rows],
                       f"WN.{k}.cond_layers.{i}.bias": b[rows]})
    return sd


def wn(sd, base):
    if base + ".weight" in sd:
        return sd[base + ".weight"]
    g, v = sd[base + ".weight_g"], sd[base + ".weight_v"]
    return g * v / v.flatten(1).norm(dim=1).reshape(-1, 1, 1)


def reference_hifigan(sd, h, mel):
    """Official HiFi-GAN Generator.forward on a state dict ``sd`` and config dict ``h``: mel [B, 80, F] -> [B, T]."""
    lr = lambda x: F.leaky_relu(x, 0.1)  # noqa: E731
    x = F.conv1d(mel, wn(sd, "conv_pre"), sd["conv_pre.bias"], padding=3)
    nk = len(h["resblock_kernel_sizes"])
    for i, (u, k) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"])):
        x = F.conv_transpose1d(lr(x), wn(sd, f"ups.{i}"), sd[f"ups.{i}.bias"], stride=u, padding=(k - u) // 2)
        xs = 0
        for j, (kr, ds) in enumerate(zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"])):
            r, y = f"resblocks.{i * nk + j}", x
            for n, d in enumerate(ds):
                if h["resblock"] == "1":
                    t = F.conv1d(lr(y), wn(sd, f"{r}.convs1.{n}"), sd[f"{r}.convs1.{n}.bias"], dilation=d,
                                 padding=(kr * d - d) // 2)
                    y = y + F.conv1d(lr(t), wn(sd, f"{r}.convs2.{n}"), sd[f"{r}.convs2.{n}.bias"],
                                     padding=(kr - 1) // 2)
                else:
                    y = y + F.conv1d(lr(y), wn(sd, f"{r}.convs.{n}"), sd[f"{r}.convs.{n}.bias"], dilation=d,
                                     padding=(kr * d - d) // 2)
            xs = xs + y
        x = xs / nk
    x = F.conv1d(F.leaky_relu(x), wn(sd, "conv_post"), sd.get("conv_post.bias"), padding=3)   # default slope 0.01
    return torch.tanh(x)[:, 0]


def log_mel_like(frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 80, frames, generator=g) * 1.5 - 6.0).clamp(-11.5, 1.0)


def nvidia_infer(sd, cfg, mel, z_final, z_early, sigma):
    """NVIDIA ``glow.WaveGlow.infer`` read straight, on a state dict with the current glow.py names and the noise
    given: z_final [B, n_remaining, T/g] and z_early (one [B, n_early, T/g] per early output, in draw order)."""
    g, nf = cfg.n_group, cfg.n_flows
    spect = F.conv_transpose1d(mel, sd["upsample.weight"], sd["upsample.bias"], stride=256)
    spect = spect[:, :, :-(1024 - 256)]
    spect = spect.unfold(2, g, g).permute(0, 2, 1, 3).contiguous().view(spect.size(0), spect.size(2) // g, -1)
    spect = spect.permute(0, 2, 1)
    audio, early = sigma * z_final, list(z_early)
    for k in reversed(range(nf)):
        n_half = audio.size(1) // 2
        a0, a1 = audio[:, :n_half], audio[:, n_half:]
        w, c = f"WN.{k}", cfg.wn_channels
        h = F.conv1d(a0, wn(sd, f"{w}.start"), sd[f"{w}.start.bias"])
        cond = F.conv1d(spect, wn(sd, f"{w}.cond_layer"), sd[f"{w}.cond_layer.bias"])
        out = 0
        for i in range(cfg.wn_layers):
            d = 2 ** i
            acts = F.conv1d(h, wn(sd, f"{w}.in_layers.{i}"), sd[f"{w}.in_layers.{i}.bias"], dilation=d, padding=d)
            acts = acts + cond[:, i * 2 * c:(i + 1) * 2 * c]
            acts = torch.tanh(acts[:, :c]) * torch.sigmoid(acts[:, c:])
            rs = F.conv1d(acts, wn(sd, f"{w}.res_skip_layers.{i}"), sd[f"{w}.res_skip_layers.{i}.bias"])
            if i < cfg.wn_layers - 1:
                h, out = h + rs[:, :c], out + rs[:, c:]
            else:
                out = out + rs
        output = F.conv1d(out, sd[f"{w}.end.weight"], sd[f"{w}.end.bias"])
        s, b = output[:, n_half:], output[:, :n_half]
        audio = torch.cat([a0, (a1 - b) / torch.exp(s)], 1)
        audio = F.conv1d(audio, torch.linalg.inv(sd[f"convinv.{k}.conv.weight"][:, :, 0].double()).float()[..., None])
        if k % cfg.n_early_every == 0 and k > 0:
            audio = torch.cat([sigma * early.pop(0), audio], 1)
    return audio.permute(0, 2, 1).contiguous().view(audio.size(0), -1)


def noise_pair(cfg, frames, seed=1):
    """(z for edgeflow [1, T], z_final, z_early for nvidia_infer): the same numbers in both layouts."""
    g = torch.Generator().manual_seed(seed)
    t = frames * 256 // cfg.n_group
    z_final = torch.randn(1, cfg.n_group - 2 * cfg.n_early_size, t, generator=g)
    z_early = [torch.randn(1, cfg.n_early_size, t, generator=g) for _ in range(2)]
    zc = torch.cat([z_early[1], z_early[0], z_final], 1)        # the last drawn is the first early output
    return zc.permute(0, 2, 1).reshape(1, -1), z_final, z_early


def fake_glow(model, old_wn=False):
    """Module objects of classes glow.WaveGlow / glow.WN / glow.Invertible1x1Conv (nn.Modules with the public
    attribute names and old-style weight norm), holding ``model``'s weights; the fake ``glow`` module is left
    in sys.modules for torch.save (the caller removes it)."""
    glow = types.ModuleType("glow")

    def wnorm(conv):                               # the old API the public files were written with
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return nn.utils.weight_norm(conv)
    c = model.config

    class Invertible1x1Conv(nn.Module):
        def __init__(self, ch):
            super().__init__()
            self.conv = nn.Conv1d(ch, ch, 1, bias=False)

    class WN(nn.Module):
        def __init__(self, n_in, n_mel):
            super().__init__()
            self.n_layers, self.n_channels = c.wn_layers, c.wn_channels
            ch = c.wn_channels
            self.in_layers, self.res_skip_layers = nn.ModuleList(), nn.ModuleList()
            self.start = wnorm(nn.Conv1d(n_in, ch, 1))
            self.end = nn.Conv1d(ch, 2 * n_in, 1)
            if old_wn:
                self.cond_layers = nn.ModuleList(wnorm(nn.Conv1d(n_mel, 2 * ch, 1)) for _ in range(c.wn_layers))
            else:
                self.cond_layer = wnorm(nn.Conv1d(n_mel, 2 * ch * c.wn_layers, 1))
            for i in range(c.wn_layers):
                self.in_layers.append(wnorm(nn.Conv1d(ch, 2 * ch, 3, dilation=2 ** i, padding=2 ** i)))
                self.res_skip_layers.append(wnorm(nn.Conv1d(ch, 2 * ch if i < c.wn_layers - 1 else ch, 1)))

    class WaveGlow(nn.Module):
        def __init__(self):
            super().__init__()
            self.upsample = nn.ConvTranspose1d(80, 80, 1024, stride=256)
            self.n_flows, self.n_group = c.n_flows, c.n_group
            self.n_early_every, self.n_early_size = c.n_early_every, c.n_early_size
            self.WN, self.convinv = nn.ModuleList(), nn.ModuleList()
            n_half, n_rem = c.n_group // 2, c.n_group
            for k in range(c.n_flows):
                if k % c.n_early_every == 0 and k > 0:
                    n_half, n_rem = n_half - c.n_early_size // 2, n_rem - c.n_early_size
                self.convinv.append(Invertible1x1Conv(n_rem))
                self.WN.append(WN(n_half, 80 * c.n_group))
            self.n_remaining_channels = n_rem

    for cls in (Invertible1x1Conv, WN, WaveGlow):
        cls.__module__, cls.__qualname__ = "glow", cls.__name__
        setattr(glow, cls.__name__, cls)
    sys.modules["glow"] = glow
    obj = WaveGlow()
    sd = nvidia_state_dict(model)
    if old_wn:
        split_cond_layers(sd, c)
    obj.load_state_dict(sd, strict=True)
    with torch.no_grad():                          # the computed weight the hook caches, as a trained file has it
        for m in obj.modules():
            if hasattr(m, "weight_g"):
                m.weight = m.weight_g * m.weight_v / m.weight_v.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    return obj
