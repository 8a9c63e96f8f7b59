"""The CKA stage of a named study (``kdlab cka --study FILE``): per stage of the teacher, linear CKA (biased and
unbiased, :mod:`kdlab.core.cka`) with the teacher on the first validation images, for a reference model (another
teacher seed) and each student, into one JSON file."""
from __future__ import annotations

from pathlib import Path

from kdlab.infra import io
from kdlab.pipeline.params import Params
from kdlab.pipeline.spec import Subset
from kdlab.pipeline.workspace import context, model_from_checkpoint


def run_cka(p: Params, subset: Subset, images: int, teacher: Path, reference: Path,
            groups: dict[str, dict[str, Path]], rebuild: str, out_file: Path) -> dict:
    """CKA with ``teacher`` on ``images`` validation images of ``subset``: ``reference`` and every student of
    ``groups`` ({group: {run: model file}}), written to ``out_file``."""
    from kdlab.core import cka
    from kdlab.core.features import features, layers

    ctx = context(p, 0, subset)
    batch = ctx.normalize(ctx.splits["val"]["images"][:images].to(ctx.device))

    def load(path: Path):
        return model_from_checkpoint(io.load_torch(path, rebuild), ctx)

    t = load(teacher)
    paths = layers(t)
    t_feats = features(t, batch, paths)

    def profile(model) -> dict:
        return cka.profile(model, batch, paths, t_feats)

    out = {"images": len(batch), "stages": paths, "reference": profile(load(reference)), "students": {}}
    for group, runs in groups.items():
        for name, path in runs.items():
            out["students"][name] = profile(load(path))
        print(f"{group}: CKA done")
    io.save_json(out, out_file)
    return out
