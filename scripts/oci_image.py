#!/usr/bin/env python3
"""Builds an OCI image archive from a program, without a container engine or a base image.

The image holds the program at /usr/local/bin, the shared libraries it links (from ldd, at
the paths the dynamic loader looks for them), the CA certificates, a non-root user (65532)
that owns the folders the program writes, and nothing else. The archive is an OCI image
layout in a tar (`podman load`, `skopeo copy oci-archive:...`, `docker load` from 25.0,
`crane push`); its layer is deterministic: the same program gives the same digest.

    oci_image.py build --program PATH --name weir-worker --tag 0.1.0 --cmd pod \
        --writable /var/lib/weir --dir /etc/weir --out weir-worker.oci.tar
    oci_image.py check [--copy SRC:DEST] [--expect PATH] weir-worker.oci.tar [-- ARGS]
        # unpacks it and runs the program in it
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

USER = 65532
CA_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]


def shared_libraries(program):
    """The absolute paths of the libraries `program` loads (and the loader), from ldd."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        sys.exit(f"ldd {program} failed: {out.stderr.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target == "not":
                sys.exit(f"{program} needs {parts[0]}, which is not installed")
            libs.append(target)
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


class Layer:
    """A tar layer with fixed times and owners, so that it is reproducible."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def _info(self, path, kind, mode, owner=0):
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.mode, info.mtime = kind, mode, 0
        info.uid = info.gid = owner
        info.uname = info.gname = ""
        return info

    def dir(self, path, mode=0o755, owner=0):
        parent = os.path.dirname(path.rstrip("/"))
        if parent not in ("", "/") and parent not in self.dirs:
            self.dir(parent)
        if path not in self.dirs:
            self.dirs.add(path)
            self.tar.addfile(self._info(path, tarfile.DIRTYPE, mode, owner))

    def file(self, path, data, mode=0o644):
        self.dir(os.path.dirname(path))
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def copy(self, src, path, mode=None):
        with open(src, "rb") as f:
            data = f.read()
        self.file(path, data, mode if mode is not None else os.stat(src).st_mode & 0o777)

    def close(self):
        self.tar.close()
        return self.buf.getvalue()


def strip_debug(program, tmp):
    """A copy of `program` without debug sections (line tables make the worker ~1 GB)."""
    out = os.path.join(tmp, os.path.basename(program))
    if subprocess.run(["strip", "--strip-debug", "-o", out, program], check=False).returncode != 0:
        sys.exit(f"strip --strip-debug {program} failed")
    return out


def build(args):
    name = os.path.basename(args.program)
    with tempfile.TemporaryDirectory() as tmp:
        program = strip_debug(args.program, tmp)
        layer = Layer()
        for d in ["/tmp"]:
            layer.dir(d, 0o1777)
        layer.copy(program, f"/usr/local/bin/{name}", 0o755)
        for lib in shared_libraries(args.program):
            layer.copy(os.path.realpath(lib), lib, 0o755)
        bundle = next((b for b in CA_BUNDLES if os.path.exists(b)), None)
        if bundle is None:
            sys.exit("no CA certificate bundle on this machine (install ca-certificates)")
        layer.copy(bundle, "/etc/ssl/certs/ca-certificates.crt", 0o644)
        layer.file("/etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\nweir:x:{USER}:{USER}:weir:/nonexistent:/sbin/nologin\n".encode())
        layer.file("/etc/group", f"root:x:0:\nweir:x:{USER}:\n".encode())
        layer.file("/etc/nsswitch.conf", b"hosts: files dns\n")
        for d in args.dir:
            layer.dir(d)
        for d in args.writable:
            layer.dir(d, 0o755, USER)
        tar = layer.close()
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=args.compression, mtime=0) as z:
        z.write(tar)
    layer_blob = gz.getvalue()
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
        "os": "linux",
        "config": {
            "User": f"{USER}:{USER}",
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "Entrypoint": [f"/usr/local/bin/{name}"],
            "Cmd": args.cmd,
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.title": args.name, "org.opencontainers.image.version": args.tag},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": f"scripts/oci_image.py build --program {name}"}],
    }
    blobs = {}

    def blob(data, media_type):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer_desc = blob(layer_blob, "application/vnd.oci.image.layer.v1.tar+gzip")
    config_desc = blob(json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config_desc, "layers": [layer_desc]}
    manifest_desc = blob(json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {
        "org.opencontainers.image.ref.name": args.tag,
        "io.containerd.image.name": f"{args.name}:{args.tag}",
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}
    out = Layer()
    out.file("/oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    out.file("/index.json", json.dumps(index, sort_keys=True).encode())
    for digest, data in sorted(blobs.items()):
        out.file(f"/blobs/sha256/{digest.split(':')[1]}", data)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "wb") as f:
        f.write(out.close())
    print(f"{args.out}: {args.name}:{args.tag}, manifest {manifest_desc['digest']}, layer {len(layer_blob) >> 20} MiB")


def read_image(archive):
    """The image's config and its unpacked layer's tar, checked against their digests."""
    with tarfile.open(archive) as t:
        files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}

    def blob(desc):
        data = files[f"blobs/sha256/{desc['digest'].split(':')[1]}"]
        if "sha256:" + hashlib.sha256(data).hexdigest() != desc["digest"] or len(data) != desc["size"]:
            sys.exit(f"{archive}: blob {desc['digest']} does not match its digest or size")
        return data

    if json.loads(files["oci-layout"])["imageLayoutVersion"] != "1.0.0":
        sys.exit(f"{archive}: not an OCI image layout 1.0.0")
    (manifest_desc,) = json.loads(files["index.json"])["manifests"]
    manifest = json.loads(blob(manifest_desc))
    config = json.loads(blob(manifest["config"]))
    layers = [gzip.decompress(blob(d)) for d in manifest["layers"]]
    for layer, diff_id in zip(layers, config["rootfs"]["diff_ids"]):
        if "sha256:" + hashlib.sha256(layer).hexdigest() != diff_id:
            sys.exit(f"{archive}: a layer does not match its diff_id")
    return config, layers


def check(args):
    """Unpacks the image, copies `--copy SRC:DEST` files into it, and runs its entrypoint with
    `args.args` in it (chroot, as the image's user): the program must run with nothing but what
    the image holds. `--expect PATH`: a file the run must leave, not empty."""
    config, layers = read_image(args.archive)
    with tempfile.TemporaryDirectory() as root:
        # The image's / (a temporary folder is private to its owner).
        os.chmod(root, 0o755)
        for layer in layers:
            with tarfile.open(fileobj=io.BytesIO(layer)) as t:
                t.extractall(root, filter="fully_trusted")
        for spec in args.copy:
            src, dest = spec.split(":", 1)
            target = os.path.join(root, dest.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(src, "rb") as f, open(target, "wb") as out:
                out.write(f.read())
        entry = config["config"]["Entrypoint"]
        uid, gid = (int(x) for x in config["config"]["User"].split(":"))
        env = dict(e.split("=", 1) for e in config["config"]["Env"])

        def enter():
            # In the child, before the program starts: the image's root, as the image's user.
            os.chroot(root)
            os.chdir("/")
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

        if os.geteuid() == 0:
            run = subprocess.run([*entry, *args.args], preexec_fn=enter, capture_output=True, text=True, env=env, check=False)
        else:
            cmd = ["unshare", "--map-root-user", f"--root={root}", *entry, *args.args]
            run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if run.returncode != 0:
            sys.exit(f"{args.archive}: {' '.join(entry + args.args)} failed in the image ({run.returncode}): {run.stderr.strip()}")
        for path in args.expect:
            found = os.path.join(root, path.lstrip("/"))
            if not os.path.isfile(found) or os.path.getsize(found) == 0:
                sys.exit(f"{args.archive}: {' '.join(entry + args.args)} left no {path} in the image: {run.stderr.strip()[-2000:]}")
        first = run.stdout.strip().splitlines()[0] if run.stdout.strip() else "ok"
        print(f"{args.archive}: {' '.join(entry + args.args)} runs in the image: {first}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--program", required=True)
    b.add_argument("--name", required=True)
    b.add_argument("--tag", required=True)
    b.add_argument("--cmd", nargs="*", default=[])
    b.add_argument("--dir", action="append", default=[], help="an empty folder owned by root")
    b.add_argument("--writable", action="append", default=[], help="an empty folder the image's user owns")
    b.add_argument("--compression", type=int, default=6)
    b.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("archive")
    c.add_argument("--copy", action="append", default=[], help="SRC:DEST, a file to put in the image first")
    c.add_argument("--expect", action="append", default=[], help="a file the run must write")
    c.add_argument("args", nargs=argparse.REMAINDER, help="-- then the program's arguments")
    args = p.parse_args()
    if args.command == "check" and args.args[:1] == ["--"]:
        args.args = args.args[1:]
    build(args) if args.command == "build" else check(args)


if __name__ == "__main__":
    main()
