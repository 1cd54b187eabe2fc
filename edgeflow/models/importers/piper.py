"""Import a Piper voice (VITS exported to ONNX, plus its ``.onnx.json``) or a Piper training checkpoint.

ONNX voices: named initializers map by name; anonymous ones (``onnx::Conv_8168``: weights torch folded while
exporting, e.g. the prior flow's weight-normed WN convs) are attributed by the node that consumes them
(``/flow/flows.6/enc/in_layers.0/Conv`` input 1 -> ``flow.flows.6.enc.in_layers.0.weight``). Traps handled:

* the phoneme embedding is stored under the graph-input-like name ``sid`` (found here as the table the
  first Gather on ``input`` reads);
* weight norm is baked into the flow's convs (and removed from the decoder): restored as v = W, g = ||W||;
* the duration flow's ElementwiseAffine is stored as the folded constant exp(-logs) (its inverse runs),
  so logs = -log(constant);
* the ONNX holds only the inference path: no posterior encoder, no duration posterior flows, and no
  ``dp.flows.1`` (VITS sampling skips it), so the model is marked inference-only with that reason.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from edgeflow.core.errors import CheckpointError, ConfigError, not_a_file, short_reason
from edgeflow.core.io import read_user_json
from edgeflow.models.importers.weights import load_baked
from edgeflow.models.vits.config import VitsConfig, from_hparams, from_piper_json, preset
from edgeflow.models.vits.model import Vits

#: What the ONNX of a Piper voice lacks (left at initial values, unusable for training).
INFERENCE_ONLY_PARTS = ("enc_q.", "dp.post_pre.", "dp.post_proj.", "dp.post_convs.", "dp.post_flows.",
                        "dp.flows.1.")
INFERENCE_ONLY_REASON = ("imported from a Piper ONNX voice, which holds only the inference path: the posterior "
                         "encoder (enc_q), the duration predictor's posterior flows and its first spline coupling "
                         "(dp.flows.1, skipped when sampling) are absent and left untrained; synthesis is exact, "
                         "training can only fine-tune the decoder")
MAX_JSON_BYTES = 16 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_onnx(path: Path):
    import onnx

    if not path.is_file():
        raise CheckpointError(not_a_file("voice file", path))
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeError, ...
        raise CheckpointError(f"{path}: not a readable ONNX file (truncated or corrupt: {short_reason(exc)})") \
            from None
    g = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer):
        raise CheckpointError(f"{path}: refused, the ONNX file points to external data files")
    names = {i.name for i in g.input}
    if not {"input", "input_lengths", "scales"} <= names or not len(g.initializer):
        raise CheckpointError(f"{path}: not a Piper voice (graph inputs {sorted(names)[:6]}, expected input, "
                              f"input_lengths, scales)")
    return model


def _scope_name(node_name: str) -> Optional[str]:
    """'/flow/flows.6/enc/in_layers.0/Conv' -> 'flow.flows.6.enc.in_layers.0'."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1]) if len(parts) >= 2 else None


_NAMED = re.compile(r"[A-Za-z_][\w.]*\.(weight|bias|gamma|beta|m|logs|emb_rel_[kv]|weight_[gv])")


def _affine_logs(arrays, consumers, producers, m_name: str) -> Optional[np.ndarray]:
    """The ElementwiseAffine ``logs`` next to its named ``m``, from the graph of its inverse
    ``(z - m) * exp(-logs)``: the Mul's other input is the folded constant exp(-logs) (Piper's export),
    or Exp of a constant holding -logs."""
    for sub, _ in consumers.get(m_name, []):
        if sub.op_type != "Sub":
            continue
        for mul, k in consumers.get(sub.output[0], []):
            if mul.op_type != "Mul":
                continue
            other = mul.input[1 - k]
            if other in arrays:
                c = arrays[other].astype(np.float64)
                if c.shape == arrays[m_name].shape and np.all(c > 0):
                    return -np.log(c)                         # the constant is exp(-logs), not logs
            elif other in producers and producers[other].op_type == "Exp" and producers[other].input[0] in arrays:
                return -arrays[producers[other].input[0]].astype(np.float64)
    return None


def onnx_weights(model) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Name the initializers of a Piper voice graph. Returns ({param name: tensor}, {param: source name}).

    Named initializers keep their names (a common prefix such as a wrapper's ``model.`` is stripped); an
    anonymous conv weight takes the name of its node's named bias, else of the node's scope; the duration
    flow's affine ``logs`` is read back from the graph of its inverse; the embedding is the table the Gather
    over ``input`` reads.
    """
    from onnx import numpy_helper

    g = model.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers: Dict[str, list] = {}
    for node in g.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))
    producers = {o: node for node in g.node for o in node.output}
    named = [n for n in arrays if _NAMED.fullmatch(n)]
    prefix = next((n[:-len("enc_p.proj.weight")] for n in named if n.endswith("enc_p.proj.weight")), "")
    strip = (lambda n: n[len(prefix):] if n.startswith(prefix) else n)
    out: Dict[str, torch.Tensor] = {}
    src: Dict[str, str] = {}

    def put(param: str, arr: np.ndarray, name: str) -> None:
        out[param] = torch.from_numpy(np.array(arr, dtype=np.float32))
        src[param] = name

    for name in named:
        put(strip(name), arrays[name], name)
        if name.endswith(".m") and strip(name)[:-2] + ".logs" not in out:
            logs = _affine_logs(arrays, consumers, producers, name)
            if logs is not None:
                put(strip(name)[:-2] + ".logs", logs, name)
    for node in g.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == "input" \
                and node.input[0] in arrays:
            put("enc_p.emb.weight", arrays[node.input[0]], node.input[0])
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in arrays \
                and node.input[1] not in named:
            bias = node.input[2] if len(node.input) > 2 else ""
            if bias in named and bias.endswith(".bias"):
                put(strip(bias)[:-len("bias")] + "weight", arrays[node.input[1]], node.input[1])
            elif _scope_name(node.name):
                put(f"{_scope_name(node.name)}.weight", arrays[node.input[1]], node.input[1])
    return out, src


def _infer_config(w: Dict[str, torch.Tensor]) -> VitsConfig:
    """A config from the weights alone (no voice json): width, vocabulary and decoder layout."""
    emb = w.get("enc_p.emb.weight")
    if emb is None or "dec.ups.0.weight" not in w:
        raise CheckpointError("not a Piper VITS graph (no phoneme embedding or decoder weights)")
    hidden = int(emb.shape[1])
    quality = "high" if w["dec.ups.0.weight"].shape[0] == 512 else ("x_low" if hidden == 96 else "medium")
    return preset(quality, num_symbols=int(emb.shape[0]), sample_rate=22050 if quality != "x_low" else 16000)


def _read_json(path: Path) -> Dict[str, Any]:
    data = read_user_json(path, "voice config", MAX_JSON_BYTES)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a Piper voice config (not a json object)")
    return data


def _check_match(cfg: VitsConfig, w: Dict[str, torch.Tensor], where: str) -> None:
    emb = w.get("enc_p.emb.weight")
    if emb is not None and int(emb.shape[0]) != cfg.num_symbols:
        raise CheckpointError(f"{where}: the config says {cfg.num_symbols} phoneme symbols, the model's embedding "
                              f"has {int(emb.shape[0])} (config and voice do not match)")


def import_piper(onnx_path: str | Path, config_json: str | Path | None = None) -> Tuple[Vits, Dict[str, Any]]:
    """Import a Piper ONNX voice as a :class:`Vits` model (eval mode, weight norm restored).

    Args:
        onnx_path: the voice's ``.onnx``.
        config_json: its ``.onnx.json``; None: ``<onnx_path>.json`` if present, else inferred from the weights
            (no phoneme map then).

    Returns:
        (model, info): info holds ``source`` (format, file, sha256, config file + sha256, producer),
        ``inference_only`` (True), ``inference_only_reason``, ``missing`` (parameters left at init) and
        ``unused`` (initializers not mapped).

    Raises:
        CheckpointError / ConfigError: foreign, truncated or unsafe files; a config that does not match.
    """
    onnx_path = Path(onnx_path)
    graph = _read_onnx(onnx_path)
    weights, _ = onnx_weights(graph)
    cfg_path = Path(config_json) if config_json is not None else Path(str(onnx_path) + ".json")
    if config_json is not None or cfg_path.is_file():
        cfg = from_piper_json(_read_json(cfg_path))
    else:
        cfg, cfg_path = _infer_config(weights), None
    _check_match(cfg, weights, str(onnx_path))
    model = Vits(cfg)
    missing, unused = load_baked(model, weights, INFERENCE_ONLY_PARTS, where=str(onnx_path))
    info = {"source": {"format": "piper-onnx", "file": onnx_path.name, "sha256": _sha256(onnx_path),
                       "config_file": cfg_path.name if cfg_path else None,
                       "config_sha256": _sha256(cfg_path) if cfg_path else None,
                       "producer": f"{graph.producer_name} {graph.producer_version}".strip()},
            "inference_only": True, "inference_only_reason": INFERENCE_ONLY_REASON,
            "missing": [p.rstrip(".") for p in INFERENCE_ONLY_PARTS if any(m.startswith(p) for m in missing)],
            "unused": [u for u in unused if not u.startswith(("/", "onnx::")) and not u[0].isdigit()]}
    return model.eval(), info


#: Plain-data classes a Lightning checkpoint pickles by reference, allowed to the weights_only unpickler
#: (they build data, run no code): Lightning's AttributeDict (read as a plain dict: Lightning need not be
#: installed) for the hyper-parameters, PosixPath for dataset paths.
LIGHTNING_SAFE_GLOBALS = [(dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
                          (dict, "lightning.fabric.utilities.data.AttributeDict"),
                          (pathlib.PosixPath, "pathlib.PosixPath"), (pathlib.PurePosixPath, "pathlib.PurePosixPath")]


def import_piper_checkpoint(ckpt_path: str | Path, config_json: str | Path | None = None
                            ) -> Tuple[Vits, Dict[str, Any]]:
    """Import a Piper (Lightning) training checkpoint: ``state_dict`` with ``model_g.*`` names.

    The config comes from ``config_json`` (a voice / training config.json) if given, else from the
    checkpoint's ``hyper_parameters``. Loaded with ``weights_only=True``; anything else is refused.
    """
    from edgeflow.models.checkpoint import _pickle_runs_code  # noqa: PLC2701 - shared safety probe

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise CheckpointError(not_a_file("checkpoint", ckpt_path))
    try:
        with torch.serialization.safe_globals(LIGHTNING_SAFE_GLOBALS):
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        if "GLOBAL" in str(exc) or _pickle_runs_code(ckpt_path):
            raise CheckpointError(f"{ckpt_path}: refused, the file holds Python objects that would run code on "
                                  f"load (weights_only load failed)") from None
        raise CheckpointError(f"{ckpt_path}: corrupt or not a PyTorch checkpoint") from None
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not any(isinstance(k, str) and k.startswith("model_g.") for k in sd):
        raise CheckpointError(f"{ckpt_path}: not a Piper training checkpoint (no state_dict with model_g.* names)")
    weights = {k[len("model_g."):]: v for k, v in sd.items() if k.startswith("model_g.") and torch.is_tensor(v)}
    if config_json is not None:
        data = _read_json(Path(config_json))
        cfg = from_piper_json(data) if "phoneme_id_map" in data else from_hparams(data)
    elif isinstance(ckpt.get("hyper_parameters"), dict):
        cfg = from_hparams(dict(ckpt["hyper_parameters"]))
    else:
        raise CheckpointError(f"{ckpt_path}: no hyper_parameters in the checkpoint; pass the voice config json")
    _check_match(cfg, weights, str(ckpt_path))
    model = Vits(cfg)
    missing, unused = load_baked(model, weights, where=str(ckpt_path))
    info = {"source": {"format": "piper-lightning-ckpt", "file": ckpt_path.name, "sha256": _sha256(ckpt_path)},
            "inference_only": False, "missing": missing, "unused": [u for u in unused if not u.startswith("model_d.")]}
    return model.eval(), info


def piper_state_dict(model: Vits) -> Dict[str, torch.Tensor]:
    """The model's weights under Piper's training names: ``model_g.*``, weight norm as ``weight_g`` / ``weight_v``."""
    out = {}
    for name, t in model.state_dict().items():
        name = name.replace(".parametrizations.weight.original0", ".weight_g")
        name = name.replace(".parametrizations.weight.original1", ".weight_v")
        out["model_g." + name] = t.detach().cpu().clone()
    return out


def piper_hparams(cfg: VitsConfig) -> Dict[str, Any]:
    """``hyper_parameters`` as Piper's VitsModel saves them (plain values)."""
    d = cfg.decoder
    hp = {k: getattr(cfg, k) for k in ("inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers",
                                      "kernel_size", "p_dropout", "use_sdp", "gin_channels", "sample_rate",
                                      "filter_length", "hop_length", "win_length", "mel_fmin", "mel_fmax",
                                      "segment_size", "mel_channels", "posterior_layers", "posterior_kernel",
                                      "flow_layers", "flow_kernel", "flow_dilation", "n_flows", "sdp_flows",
                                      "dp_filter_channels")}
    hp.update(num_symbols=cfg.num_symbols, num_speakers=cfg.n_speakers, resblock=d.resblock,
              resblock_kernel_sizes=list(d.resblock_kernel_sizes),
              resblock_dilation_sizes=[list(x) for x in d.resblock_dilation_sizes],
              upsample_rates=list(d.upsample_rates), upsample_initial_channel=d.upsample_initial_channel,
              upsample_kernel_sizes=list(d.upsample_kernel_sizes))
    return hp


def save_piper_checkpoint(model: Vits, path: str | Path) -> None:
    """Write ``{"state_dict": {model_g.*}, "hyper_parameters": {...}}`` (Piper's Lightning layout), atomically."""
    from edgeflow.core.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": piper_state_dict(model), "hyper_parameters": piper_hparams(model.config)}, tmp)
