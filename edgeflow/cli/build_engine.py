"""``edgeflow build-engine BUNDLE``: build the TensorRT engine on the device (Jetson / GPU)."""

from __future__ import annotations


def add_arguments(sub) -> None:
    p = sub.add_parser("build-engine", help="build the TensorRT engine of a bundle, on the device",
                       description="Run on the Jetson/GPU that will run the engine (engines are device-specific). "
                                   "Needs TensorRT (JetPack ships it).")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--engine", default="model.plan", help="engine file name inside the bundle")
    p.add_argument("--print-command", action="store_true", help="only print the equivalent trtexec command")
    p.set_defaults(func=run)


def run(args) -> int:
    import shlex

    from edgeflow.export.tensorrt import build_engine, trtexec_command
    from edgeflow.runtime.bundle import read_manifest

    manifest = read_manifest(args.bundle, task=None)
    if manifest.get("task") == "tts":                     # a voice: encoder and decoder engines
        from edgeflow.export.tensorrt_voice import build_voice_engines, voice_trtexec_commands

        if args.print_command:
            for cmd in voice_trtexec_commands(args.bundle, manifest).values():
                print(" ".join(shlex.quote(c) for c in cmd))
            return 0
        for path in build_voice_engines(args.bundle, manifest):
            print(f"engine written: {path}")
        return 0
    if args.print_command:
        print(" ".join(shlex.quote(c) for c in trtexec_command(args.bundle, manifest, args.engine)))
        return 0
    path = build_engine(args.bundle, manifest, args.engine)
    print(f"engine written: {path}")
    return 0
