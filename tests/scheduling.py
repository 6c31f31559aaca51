"""How the suite's modules are spread over the xdist workers (`make test`, --dist loadfile).

A module runs whole on one worker, so its module fixtures are made once; the suite's wall time
is then bounded below by its longest module, and a long module handed out last runs on alone
while the other workers idle. Two rules keep that tail short:

* the ``[kafka-python]`` half of a module (its ``kafka_client`` tests with the second library,
  tests/conftest.py) is a work unit of its own, so the two halves of a long module (the
  ``kill -9`` recoveries) can run on two workers at once;
* modules are handed out longest first: the ones listed in ``LONG_MODULES`` (measured with
  ``--durations``; a stale list costs time, never a result) in that order, then the others by
  their number of tests, most first (pytest-xdist's own order). The Makefile passes
  ``--no-loadscope-reorder`` so xdist keeps this order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# The modules whose tests took about a minute or more on one worker (--durations, a loaded
# machine), longest first; paths under tests/.
LONG_MODULES = (
    "integration/test_trainer_recovery.py",
    "integration/test_trainer_distributed_recovery.py",
    "integration/test_trainer_sharded.py",
    "integration/test_checkpoint_kill_phases.py",
    "integration/test_dynamic_tables_trainer.py",
    "integration/test_trainer_distributed.py",
    "integration/test_trainer_sparse.py",
    "integration/test_trainer_safety.py",
    "integration/test_demo_delayed.py",
    "integration/test_dynamic_tables_ranks.py",
    "integration/test_replaced_log.py",
    "integration/test_demo.py",
    "unit/test_ci_contract.py",
    "unit/test_models_target_scale.py",
    "integration/test_wheel_install.py",
)
SECOND_CLIENT = "kafka-python"


def _second_client_half(nodeid: str) -> bool:
    return SECOND_CLIENT in nodeid.partition("[")[2]


def halves_by_client(config: pytest.Config, log: Any) -> Any:
    """xdist's load-by-file scheduler, with a module's second-library tests a unit of their
    own (pytest-xdist imported here: a plain `pytest` run needs none of this)."""
    from xdist.scheduler import LoadFileScheduling

    class HalvesByClient(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return f"{scope}[{SECOND_CLIENT}]" if _second_client_half(nodeid) else scope

    return HalvesByClient(config, log)


def longest_first(items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place, module by module (a module's own order kept)."""
    sizes: dict[Path, int] = {}
    first: dict[Path, int] = {}
    for index, item in enumerate(items):
        sizes[item.path] = sizes.get(item.path, 0) + 1
        first.setdefault(item.path, index)

    def rank(item: pytest.Item) -> tuple[int, int, int]:
        name = f"{item.path.parent.name}/{item.path.name}"
        listed = LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)
        return listed, -sizes[item.path], first[item.path]

    items.sort(key=rank)
