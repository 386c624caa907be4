"""Paired differences of a sweep: the same seed (same init, same mask) with and without a change.

    python experiments/paired.py --results experiments/results/fashion_mnist_study

Seeds make the comparison paired: at one sparsity and budget, seed k gives the same initial
weights and the same mask to PaI and to PaI + Sign-In, so the per-seed difference removes most
of the seed-to-seed spread. Printed (markdown):

* main group: each Sign-In cell minus the PaI cell that differs from it only in ``signin.*``;
* ablation group: each Sign-In ablation cell minus the cell of its own group that differs from
  it only in ``signin.*`` if there is one (e.g. a fresh init with and without Sign-In on a
  transferred mask), else minus the main Sign-In cell that differs from it only in
  ``signin.*`` (same mask), i.e. what the ablated choice changes;
* transfers: each cell started from another cell's run (``init_from.workdir`` =
  ``{workdir:<cell>}``, experiments/sweep.py) minus that source cell, seed k against the source's
  seed k, whose mask (and signs or magnitudes) it was given.

Each row: both cells' mean test accuracy, the mean and sample std of the per-seed differences
in percentage points, how many seeds the change helped, and the same difference for the sign
flips against initialization.
"""

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # pylint: disable=g-import-not-at-top


def _mask_key(record) -> str:
  """The record's overrides without Sign-In's (and without export_epochs, which writes files and
  changes no training): equal for runs on the same masks and inits."""
  return repr(sorted((k, v) for k, v in record["overrides"].items()
                     if not k.startswith("signin.") and k != "export_epochs"))


_DERIVED = {"signin": lambda r: bool(r["signin"]["enabled"]), "mask_key": _mask_key}


def _find(records, **want) -> Optional[Dict[str, Any]]:
  """The first record whose fields equal ``want`` (``signin``: ``signin.enabled``;
  ``mask_key``: :func:`_mask_key`, computed only for records that match the fields before it)."""
  for other in records:
    if all((_DERIVED[k](other) if k in _DERIVED else other[k]) == v for k, v in want.items()):
      return other
  return None


def _signin_partner(record, records) -> Optional[Dict[str, Any]]:
  """Without Sign-In in the same group, else (ablations) the main Sign-In run; same mask."""
  same = dict(seed=record["seed"], mask_key=_mask_key(record))
  partner = _find(records, group=record["group"], signin=False, **same)
  if partner is None and record["group"] != "main":
    partner = _find(records, group="main", signin=True, **same)
  return partner


def paired_rows(records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """One row per (changed cell, reference cell) with per-seed paired statistics."""
  pairs: Dict[tuple, List[tuple]] = {}
  for r in records:
    partners = []
    if r["signin"]["enabled"]:
      partners.append(_signin_partner(r, records))
    source = sweep.source_cell(r["overrides"])
    if source is not None:
      partners.append(_find(records, cell=source, seed=r["seed"]))
    for partner in partners:
      if partner is not None and partner is not r:
        pairs.setdefault((r["cell"], partner["cell"]), []).append((r, partner))
  rows = []
  for (cell, reference), runs in pairs.items():
    runs.sort(key=lambda p: p[0]["seed"])
    acc = [100 * (a["test_accuracy"] - b["test_accuracy"]) for a, b in runs]
    flips = [100 * (a["sign_flips"] - b["sign_flips"]) for a, b in runs]
    rows.append({
        "cell": cell, "method": runs[0][0]["method"], "reference": reference,
        "reference_method": runs[0][1]["method"], "group": runs[0][0]["group"],
        "sparsity": runs[0][0]["target_sparsity"], "n": len(runs),
        "accuracy": sweep.mean_std([100 * a["test_accuracy"] for a, _ in runs])[0],
        "reference_accuracy": sweep.mean_std([100 * b["test_accuracy"] for _, b in runs])[0],
        "difference": sweep.mean_std(acc), "helped": sum(d > 0 for d in acc),
        "flips_difference": sweep.mean_std(flips),
    })
  rows.sort(key=lambda r: (r["group"] != "main", r["method"], r["sparsity"], r["cell"]))
  return rows


def _pm(mean_std) -> str:
  mean, std = mean_std
  return f"{mean:+.2f}" + ("" if std != std else f" ± {std:.2f}")  # std is NaN for one seed


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
  lines = ["| change | vs | sparsity (%) | n | accuracy (%) | vs (%) | paired difference (pp) "
           "| seeds helped | sign-flip difference (pp) |", "|---" * 9 + "|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['reference_method']} | {100 * r['sparsity']:g} | "
                 f"{r['n']} | {r['accuracy']:.2f} | {r['reference_accuracy']:.2f} | "
                 f"{_pm(r['difference'])} | {r['helped']}/{r['n']} | "
                 f"{_pm(r['flips_difference'])} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--results", required=True, help="A sweep's results directory.")
  args = parser.parse_args(argv)
  records = sweep.load_results(args.results)
  if not records:
    print(f"No results in {args.results}.", file=sys.stderr)
    return 1
  print(markdown(paired_rows(records)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
