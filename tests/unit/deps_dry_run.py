#!/usr/bin/env python3
"""deps_dry_run.py - `./chorus deps` installs no recommended packages.

docker-compose is installed only to validate compose/docker-compose.yml; it
*recommends* docker.io, which depends on containerd and runc (a container
daemon, started on a normal host), and apt's recommends also bring
needrestart. So:

  1. `./chorus deps --dry-run` prints the apt-get command it runs for the
     full package list, and that command says --no-install-recommends;
  2. apt-get simulates that very command on an empty dpkg status (as on a
     fresh box, no root needed) and none of docker.io, containerd, runc,
     needrestart is among the packages it would install. This half is
     skipped (said so, the test still passes on 1.) where apt-get or its
     package lists are missing.

Environment (tests/meson.build): CHORUS_ROOT, the source dir holding ./chorus.
Exit 0 on success, 1 on a failure.
"""
import os
import shlex
import shutil
import subprocess
import sys

UNWANTED = {"docker.io", "containerd", "runc", "needrestart"}


def main():
    chorus = os.path.join(os.environ["CHORUS_ROOT"], "chorus")
    r = subprocess.run([chorus, "deps", "--dry-run"], capture_output=True, text=True, timeout=60)
    lines = [l for l in r.stdout.splitlines() if "apt-get" in l and " install " in l]
    if r.returncode != 0 or len(lines) != 1:
        print("FAIL: `chorus deps --dry-run` exited %d and printed no single apt-get install line:\n%s%s"
              % (r.returncode, r.stdout, r.stderr))
        return 1
    argv = shlex.split(lines[0])
    if "--no-install-recommends" not in argv:
        print("FAIL: the install command pulls recommended packages: %s" % lines[0])
        return 1
    if "docker-compose" not in argv:
        print("FAIL: docker-compose is not in the package list: %s" % lines[0])
        return 1
    print("install command: %s" % lines[0])

    lists = "/var/lib/apt/lists"
    if not shutil.which("apt-get") or not os.path.isdir(lists) or not any(
            f.endswith(("_Packages", ".lz4", ".xz", ".gz")) for f in os.listdir(lists)):
        print("apt-get or its package lists missing: simulation skipped")
        return 0
    i = argv.index("apt-get")
    sim = (["apt-get", "-s", "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1"]
           + [a for a in argv[i + 1:] if a not in ("-y", "-q")])
    s = subprocess.run(sim, capture_output=True, text=True, timeout=120)
    installs = {l.split()[1] for l in s.stdout.splitlines() if l.startswith("Inst ")}
    if s.returncode != 0 or not installs:
        print("apt-get cannot simulate here (exit %d: %s): simulation skipped"
              % (s.returncode, s.stderr.strip().splitlines()[-1:] or ""))
        return 0
    bad = sorted(installs & UNWANTED)
    if bad:
        print("FAIL: on a fresh box the install would bring %s" % ", ".join(bad))
        return 1
    print("simulated on an empty dpkg status: %d packages, none of %s" % (len(installs), ", ".join(sorted(UNWANTED))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
