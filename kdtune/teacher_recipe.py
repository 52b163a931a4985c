"""What a pretrained model is trained with: the plain recipe its id hashes
(:meth:`kdtune.spec.StudySpec.teacher_id`) and its record ``teacher.json`` holds
(:mod:`kdtune.teacher_store`). Nothing heavy is imported here: the spec uses it, and the spec
loads without torch, Ray or pyarrow."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdtune.spec import DatasetSpec, StudySpec


# the dataset fields of the first release: they hash even when null (every field added since,
# the knobs and ``path``, hashes only when set); frozen, as changing it changes teacher ids
FIRST_DATASET_FIELDS = frozenset({"name", "split", "split_seed", "max_train"})


def recipe(spec: StudySpec, dataset: DatasetSpec, model: str = "teacher") -> dict[str, Any]:
    """Everything that changes a pretrained model's weights, in plain form: what
    :meth:`kdtune.spec.StudySpec.teacher_id` hashes, and what ``teacher.json`` records.

    ``model='student'`` is the pretrained student-architecture model that teaches ``self`` and
    ``reversed``: the same training recipe with the student's architecture.
    """
    spec_model = spec.teacher if model == "teacher" else spec.student
    data = dataset.model_dump(exclude={"data_dir", "download"})
    # fields added after the first release hash only when set, so stored teachers keep their
    # ids; every knob that is set changes the data, hence the teacher
    data = {k: v for k, v in data.items() if v is not None or k in FIRST_DATASET_FIELDS}
    # training.amp is left out on purpose: see StudySpec.teacher_id
    return {"dataset": data, "model": spec_model.model_dump(), "seed": spec.teacher_seed,
            "epochs": spec.training.teacher_epochs,
            "training": spec.training.model_dump(
                exclude={"student_epochs", "amp"}
                | ({"aug_share"} if spec.training.aug_share == 1.0 else set()))}


def recipe_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
