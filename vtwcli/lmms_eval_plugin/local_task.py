"""lmms-eval tasks over vtwcli datasets (bundled or your own JSONL), offline: no hub, local files only.

:func:`write_task` writes ``<directory>/<task>.yaml`` and a one-line ``<task>_utils.py`` that binds a
:class:`LocalTask` to the dataset file; pass the directory to ``lmms-eval --include_path``. The task's
prompt (``question_text``), images (``load_images``) and scoring (``score_answer``, metric ``accuracy``)
are vtwcli's own, so lmms-eval's accuracy on it is comparable sample for sample with `vtw calibrate`'s
(``vtwcli.calibration.greedy_answers`` + ``vtwcli.datasets.score_answer``).

Importing this module needs neither lmms-eval nor torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vtwcli.atomic import atomic_write_text
from vtwcli.errors import VtwError

__all__ = ["LocalTask", "write_task", "task_name_for"]

DEFAULT_MAX_NEW_TOKENS = 8


class LocalTask:
    """The lmms-eval callbacks of one vtwcli dataset file; documents are its JSONL rows, matched by ``id``."""

    def __init__(self, dataset: str | Path):
        from vtwcli.datasets import load_dataset

        self.dataset = load_dataset(dataset)
        self._by_id = {sample.id: sample for sample in self.dataset.samples}

    def sample(self, doc: dict):
        try:
            return self._by_id[str(doc["id"])]
        except KeyError:
            raise VtwError(f"{self.dataset.path}: lmms-eval document {doc.get('id')!r} is not in the dataset; "
                           "regenerate the task with write_task") from None

    def doc_to_visual(self, doc: dict) -> list:
        from vtwcli.datasets import load_images

        return load_images(self.sample(doc))

    def doc_to_text(self, doc: dict, lmms_eval_specific_kwargs=None) -> str:
        from vtwcli.datasets import question_text

        return question_text(self.sample(doc))

    def doc_to_messages(self, doc: dict, lmms_eval_specific_kwargs=None) -> list[dict]:
        """The chat form: an image entry per image, then the question (as ``vtwcli.datasets.chat_prompt`` renders)."""
        content = [{"type": "image", "url": image} for image in self.doc_to_visual(doc)]
        content.append({"type": "text", "text": self.doc_to_text(doc)})
        return [{"role": "user", "content": content}]

    def process_results(self, doc: dict, results: list) -> dict:
        from vtwcli.datasets import score_answer

        prediction = results[0] if results else ""
        prediction = getattr(prediction, "text", prediction)  # chat models may return GenerationResult objects
        return {"accuracy": float(score_answer(prediction, self.sample(doc)))}


def task_name_for(dataset: str | Path) -> str:
    """``vtw_<dataset name>`` (lmms-eval task names: letters, digits, underscores)."""
    from vtwcli.datasets import load_dataset

    return "vtw_" + re.sub(r"\W+", "_", load_dataset(dataset).name).strip("_").lower()


_YAML = """\
# lmms-eval task over the vtwcli dataset {path} (written by vtwcli.lmms_eval_plugin.local_task.write_task)
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path_json}
test_split: test
output_type: generate_until
doc_to_visual: !function {module}.doc_to_visual
doc_to_text: !function {module}.doc_to_text
doc_to_messages: !function {module}.doc_to_messages
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
  num_beams: 1
process_results: !function {module}.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 1.0
"""

_UTILS = """\
# Binds vtwcli's LocalTask to {path} (written by vtwcli.lmms_eval_plugin.local_task.write_task).
from vtwcli.lmms_eval_plugin.local_task import LocalTask

_task = LocalTask({path_json})
doc_to_visual = _task.doc_to_visual
doc_to_text = _task.doc_to_text
doc_to_messages = _task.doc_to_messages
process_results = _task.process_results
"""


def write_task(directory: str | Path, dataset: str | Path, *, task: str | None = None,
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
    """Write an lmms-eval task over every row of ``dataset`` (a bundled name or a JSONL path) into ``directory``;
    return its task name (default ``vtw_<dataset name>``)."""
    from vtwcli.datasets import load_dataset

    loaded = load_dataset(dataset)
    name = task or task_name_for(dataset)
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise VtwError(f"task name {name!r}: use letters, digits and underscores (it names a Python module)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = str(Path(loaded.path).resolve())
    module = f"{name}_utils"
    atomic_write_text(directory / f"{name}.yaml", _YAML.format(
        path=path, path_json=json.dumps(path), task=name, module=module, max_new_tokens=int(max_new_tokens)))
    atomic_write_text(directory / f"{module}.py", _UTILS.format(
        path=path, path_json=json.dumps(path)))
    return name
