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
    from edgeflow.export.tensorrt import build_engine, trtexec_command
    from edgeflow.runtime.bundle import read_manifest

    if args.print_command:
        import shlex

        print(" ".join(shlex.quote(c) for c in trtexec_command(args.bundle, read_manifest(args.bundle), args.engine)))
        return 0
    path = build_engine(args.bundle, read_manifest(args.bundle), args.engine)
    print(f"engine written: {path}")
    return 0
