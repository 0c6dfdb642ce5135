"""Boot benchmark: median seconds to each boot stage, per boot mode, under the accel QEMU gets here.

    .venv/bin/python bench/bench_boot.py [--repeat 3] [--spec 8.3:testing] [--modes bios-cd,uefi-usb]

Builds (or reuses) an ISO from the embedded fixture repository with the probe
initrd as install.img, boots it --repeat times in each mode (the PXE modes
network-boot its PXE tree), and prints the median time from VM start to
bootloader, hypervisor, kernel and init.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xcpimg.boot import BOOT_MODES, boot, boot_mode  # noqa: E402
from xcpimg.boot.accel import choose_accel  # noqa: E402
from xcpimg.fixture_repo import ensure_fixture_repo  # noqa: E402
from xcpimg.iso.build import IsoOptions, build_iso  # noqa: E402
from xcpimg.layers import resolve  # noqa: E402
from xcpimg.probe import build_probe_initrd  # noqa: E402
from xcpimg.repos import RepoConfig  # noqa: E402
from xcpimg.stages import STAGES  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--spec", default="8.3:testing")
    ap.add_argument("--modes", default=",".join(BOOT_MODES))
    args = ap.parse_args()
    layers = resolve(args.spec)
    repo = ensure_fixture_repo()
    with tempfile.TemporaryDirectory(prefix="xcpimg-bench-boot-") as tmp:
        work = Path(tmp)
        build_probe_initrd(work / "probe.img")
        t0 = time.monotonic()
        iso = work / "bench.iso"
        build_iso(IsoOptions(layers=layers, install_img=work / "probe.img", output=iso, volid="BENCH",
                             repo_config=RepoConfig(srcurl=repo.srcurl(layers.dist), gpgkey=repo.gpgkey_url)))
        print(f"xcpimg iso {args.spec}: {time.monotonic() - t0:.1f} s, {iso.stat().st_size >> 20} MiB")
        print(f"accel: {choose_accel()}, repeat {args.repeat}")
        print(f"{'mode':10}" + "".join(f"{s:>12}" for s in STAGES) + f"{'total':>10}")
        for mode in args.modes.split(","):
            bm = boot_mode(mode)
            runs = [boot(iso, bm.firmware, bm.media, logdir=work / f"{mode}-{i}", no_eltorito=bm.no_eltorito)
                    for i in range(args.repeat)]
            medians = [statistics.median(r.reached[s] for r in runs) if all(s in r.reached for r in runs)
                       else float("nan") for s in STAGES]
            total = statistics.median(r.seconds for r in runs)
            print(f"{mode:10}" + "".join(f"{m:12.1f}" for m in medians) + f"{total:10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
