#!/usr/bin/python3
"""Write a reproducible OCI image layout for the end-to-end tests (stdlib only).

    mkimage.py OUT_DIR --size-mib N --tag TAG [--seed S]

The image has ONE uncompressed tar layer holding one file of N MiB of seeded
pseudo-random bytes (incompressible, like real layers; the same seed and size
give the same digests), a config blob and an OCI image manifest. The layer is
streamed to disk in chunks while it is hashed, so N may be larger than memory.

OUT_DIR may already hold a layout written by this script: the new image is added
to its index.json (an entry with the same tag is replaced), so several tags can
share one layout. Push it with e.g.

    skopeo copy --preserve-digests oci:OUT_DIR:TAG docker://HOST/REPO:TAG

(--preserve-digests keeps the layer uncompressed; without it skopeo gzips it and
the digests printed here no longer match the registry's.)

Prints one JSON line: {"manifest_digest", "layer_digest", "layer_size", ...}.
"""
import argparse
import hashlib
import json
import os
import random
import sys
import tarfile

CHUNK = 1 << 20                  # 1 MiB: bounded memory whatever --size-mib is
MTIME = 1_700_000_000            # fixed timestamps: byte-identical output across runs
CREATED = "2023-11-14T22:13:20Z"
REF_NAME = "org.opencontainers.image.ref.name"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"   # uncompressed: digest == diff_id


def blob_path(layout, digest):
    return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])


def write_json_blob(layout, obj):
    """Store obj as canonical JSON (sorted keys, no spaces); return (digest, size)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(blob_path(layout, digest), "wb") as f:
        f.write(data)
    return digest, len(data)


def write_layer(layout, size, seed):
    """Stream a one-file ustar archive into blobs/ while hashing it; return (digest, size)."""
    info = tarfile.TarInfo("data/random.bin")
    info.size, info.mtime, info.mode = size, MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    rng = random.Random(seed)
    h, n = hashlib.sha256(), 0
    tmp = os.path.join(layout, "blobs", "sha256", ".layer.tmp")
    with open(tmp, "wb") as f:
        def put(b):
            nonlocal n
            f.write(b)
            h.update(b)
            n += len(b)

        put(info.tobuf(format=tarfile.USTAR_FORMAT))
        left = size
        while left:
            k = min(CHUNK, left)
            put(rng.randbytes(k))
            left -= k
        put(b"\0" * (-size % tarfile.BLOCKSIZE))     # pad the member to a 512-byte block
        put(b"\0" * (2 * tarfile.BLOCKSIZE))         # end-of-archive marker
    digest = "sha256:" + h.hexdigest()
    os.replace(tmp, blob_path(layout, digest))
    return digest, n


def update_index(layout, descriptor, tag):
    path = os.path.join(layout, "index.json")
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    if os.path.exists(path):
        with open(path) as f:
            index = json.load(f)
    index["manifests"] = [m for m in index.get("manifests", [])
                          if m.get("annotations", {}).get(REF_NAME) != tag] + [descriptor]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, path)


def build(layout, size_mib, tag, seed):
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)

    layer_digest, layer_size = write_layer(layout, size_mib * 1024 * 1024, seed)
    config = {
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": CREATED, "created_by": f"tests/e2e/mkimage.py --size-mib {size_mib} --tag {tag} --seed {seed}"}],
    }
    config_digest, config_size = write_json_blob(layout, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": MT_LAYER, "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = write_json_blob(layout, manifest)
    update_index(layout, {"mediaType": MT_MANIFEST, "digest": manifest_digest, "size": manifest_size,
                          "annotations": {REF_NAME: tag}}, tag)
    return {"manifest_digest": manifest_digest, "manifest_size": manifest_size,
            "layer_digest": layer_digest, "layer_size": layer_size,
            "config_digest": config_digest, "tag": tag, "layout": os.path.abspath(layout)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--size-mib", type=int, required=True, help="size of the random file in the layer (MiB, >= 0)")
    ap.add_argument("--tag", required=True, help="org.opencontainers.image.ref.name of the image in index.json")
    ap.add_argument("--seed", type=int, default=1, help="PRNG seed (default 1); same seed+size = same layer")
    a = ap.parse_args()
    if a.size_mib < 0:
        ap.error("--size-mib must be >= 0")
    # same grammar as a registry tag, so `oci:DIR:TAG` and `docker://.../REPO:TAG` both accept it
    if not (1 <= len(a.tag) <= 128 and (a.tag[0].isalnum() or a.tag[0] == "_")
            and all(c.isascii() and (c.isalnum() or c in "._-") for c in a.tag)):
        ap.error("--tag must match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
    print(json.dumps(build(a.out_dir, a.size_mib, a.tag, a.seed)))


if __name__ == "__main__":
    sys.exit(main())
