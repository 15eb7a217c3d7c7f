"""What identifies the training data a set was distilled on: its facts and a fingerprint of its content,
saved with checkpoints and distilled sets, and keying the UDD proxy's cache."""
import hashlib


CHUNK_ROWS_BYTES = 64 << 20  # hashed a slice at a time: memory-mapped images are never copied whole


def data_fingerprint(data) -> str:
    """sha256 of the training images and labels (so a changed dataset never reuses a proxy or a run); the
    images are hashed in row slices, the same digest as of their bytes at once."""
    h = hashlib.sha256()
    images = data.images
    step = max(1, CHUNK_ROWS_BYTES // max(1, images[0].numel() * images.element_size())) if len(images) else 1
    for i in range(0, images.shape[0], step):
        h.update(images[i:i + step].cpu().contiguous().numpy().tobytes())
    h.update(data.labels.cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def data_facts(data) -> dict:
    """What identifies the training data (the fingerprint hashes images and labels: ~0.1 s for MNIST)."""
    info = data.info
    return {"name": info.name, "num_train": int(data.images.shape[0]), "num_test": int(data.test_images.shape[0]),
            "num_classes": info.num_classes, "channels": info.channels, "size": info.size,
            "class_names": list(info.class_names), "fingerprint": data_fingerprint(data)}


def data_mismatch(saved: dict, facts: dict) -> list:
    """How the data described by `saved` (facts stored with a run) differs from `facts` (the data
    here), one line per fact; facts an older file lacks are not compared."""
    return [f"{k} {saved[k]!r} there, {facts[k]!r} here" for k in facts if k in saved and saved[k] != facts[k]]
