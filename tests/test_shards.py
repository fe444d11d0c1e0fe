"""pds_jax.shards and pds_jax.io_utils: round bookkeeping, resume, manifests, atomic writers."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pds_jax import io_utils, shards


@settings(max_examples=50, deadline=None)
@given(total=st.integers(1, 500), batch=st.integers(1, 64))
def test_rounds_cover_every_item_once(total, batch):
  rounds = shards.num_rounds(total, batch)
  seen = []
  for r in range(rounds):
    indices, real = shards.round_indices(r, batch, total)
    assert indices.shape == (batch,) and 1 <= real <= batch
    assert np.all(indices[real:] == total - 1)  # padding repeats the last item
    seen.extend(indices[:real])
  assert seen == list(range(total))


def test_resume_finds_complete_shards_only(tmp_path):
  for r in (0, 2):
    io_utils.write_npz(shards.shard_path(str(tmp_path), r, 0), samples=np.zeros((1,), np.uint8))
  for name in ('samples_1_0.npz.tmp', '.samples_3_0.npz.x.tmp', 'samples_x_0.npz', 'bpd_4_0.npz', 'run.json'):
    (tmp_path / name).write_bytes(b'')
  assert shards.finished_rounds(str(tmp_path)) == {0: str(tmp_path / 'samples_0_0.npz'),
                                                   2: str(tmp_path / 'samples_2_0.npz')}
  assert shards.pending_rounds(str(tmp_path), 4) == [1, 3]
  assert shards.pending_rounds(str(tmp_path), 6, prefix='bpd') == [0, 1, 2, 3, 5]
  assert set(shards.wait_for_rounds(str(tmp_path), 1, timeout=0.)) == {0, 2}
  with pytest.raises(ValueError, match=r'timed out after 0 s waiting for rounds \[1\]'):
    shards.wait_for_rounds(str(tmp_path), 3, timeout=0.)


def test_manifest_is_written_once_then_checked(tmp_path):
  shards.check_manifest(str(tmp_path), {'num_steps': 10, 'seed': 0})
  assert json.loads((tmp_path / 'run.json').read_text()) == {'num_steps': 10, 'seed': 0}
  shards.check_manifest(str(tmp_path), {'num_steps': 10, 'seed': 0})
  with pytest.raises(ValueError, match=r"holds samples of another run \(settings differ in \['num_steps'\]\)"):
    shards.check_manifest(str(tmp_path), {'num_steps': 20, 'seed': 0})


def test_load_sample_folder_names_what_is_missing(tmp_path):
  with pytest.raises(ValueError, match='no report.json'):
    shards.load_sample_folder(str(tmp_path))
  io_utils.write_json(str(tmp_path / 'report.json'), {'num_samples': 3, 'settings': {}})
  with pytest.raises(ValueError, match=r'no samples_<round>_<host>.npz'):
    shards.load_sample_folder(str(tmp_path))
  io_utils.write_npz(shards.shard_path(str(tmp_path), 0, 0), samples=np.arange(2, dtype=np.uint8)[:, None])
  io_utils.write_npz(shards.shard_path(str(tmp_path), 1, 1), samples=np.arange(2, 4, dtype=np.uint8)[:, None])
  samples, report = shards.load_sample_folder(str(tmp_path))
  assert samples[:, 0].tolist() == [0, 1, 2] and report['num_samples'] == 3


def test_as_count_keeps_integers_integral():
  assert shards.as_count(40.0) == 40 and isinstance(shards.as_count(40.0), int)
  assert shards.as_count(103.25) == 103.25


def test_output_folder_errors_name_the_folder(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(ValueError, match='cannot create the output folder .*file/out'):
    io_utils.output_folder(str(tmp_path / 'file'), 'out')
  if os.geteuid() != 0:  # root writes anywhere
    (tmp_path / 'ro' / 'out').mkdir(parents=True)
    (tmp_path / 'ro' / 'out').chmod(0o500)
    with pytest.raises(ValueError, match='the output folder .*ro/out is not writable'):
      io_utils.output_folder(str(tmp_path / 'ro'), 'out')
