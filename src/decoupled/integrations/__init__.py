"""Integrations with training frameworks.

* :mod:`decoupled.integrations.hf`: Hugging Face ``Trainer`` (``pip install decoupled[hf]``): the
  optimizer and scheduler from ``TrainingArguments`` (a torch-form ``weight_decay`` converted for
  other conventions, or set from a timescale), the weight-decay schedule and ``doctor`` callbacks,
  and the checks of a ``TrainingArguments`` file (with :mod:`decoupled.integrations.hf_args`).

Accelerate, DDP and FSDP2 need no glue: ``decoupled.AdamW`` is a ``torch.optim.Optimizer`` and
works under ``accelerator.prepare``, ``DistributedDataParallel`` and ``fully_shard`` as it is
(see ``docs/integrations.md``). Submodules are imported on first use, so importing this package
does not import ``transformers``.
"""

__all__ = ["hf"]


def __getattr__(name: str):
    if name == "hf":
        import importlib

        module = importlib.import_module(".hf", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'decoupled.integrations' has no attribute {name!r}")
