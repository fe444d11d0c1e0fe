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


def test_manifest_is_checked_against_existing_shards_only(tmp_path):
  folder = str(tmp_path)
  assert shards.check_manifest(folder, {'num_steps': 10, 'seed': 0}) is False  # nothing there
  shards.write_manifest(folder, {'num_steps': 10, 'seed': 0})
  assert json.loads((tmp_path / 'run.json').read_text()) == {'num_steps': 10, 'seed': 0}
  assert shards.check_manifest(folder, {'num_steps': 10, 'seed': 0}) is True
  # a run.json beside no shards (a call that failed before its first shard) does not block another run
  assert shards.check_manifest(folder, {'num_steps': 20, 'seed': 0}) is False
  io_utils.write_npz(shards.shard_path(folder, 0, 0), samples=np.zeros((1,), np.uint8))
  with pytest.raises(ValueError, match=r"holds samples of another run \(settings differ in \['num_steps'\]\)"):
    shards.check_manifest(folder, {'num_steps': 20, 'seed': 0})
  assert shards.check_manifest(folder, {'num_steps': 20, 'seed': 0}, prefix='bpd') is False  # other shards


def _images_round(calls):
  def round_fn(r):
    calls.append(r.index)
    return {'samples': np.linspace(-0.5, 1.5, r.real * 4, dtype=np.float32).reshape(r.real, 2, 2, 1),
            'keys': np.asarray(r.keys),
            'items': r.items}
  return round_fn


def test_run_rounds_writes_every_round_once_and_resumes(tmp_path, capsys):
  folder, calls = str(tmp_path / 'out'), []
  finished = shards.run_rounds(folder, {'a': 1}, 10, 4, _images_round(calls), seed=3, what='images')
  assert calls == [0, 1, 2] and finished.files == [shards.shard_path(folder, r, 0) for r in range(3)]
  assert len(finished.seconds) == 3 and json.loads((tmp_path / 'out' / 'run.json').read_text()) == {'a': 1}
  out = capsys.readouterr().out
  assert '10 images in 3 rounds of 4: 3 to run here' in out and 'first round:' in out
  assert 'the other 2 rounds here: at most about' in out
  with np.load(finished.files[2]) as f:
    assert f['samples'].dtype == np.uint8 and f['samples'].shape == (2, 2, 2, 1)  # round_fn keeps the real items
    assert f['samples'].min() == 0 and f['samples'].max() == 255  # clipped, as score_sde writes them
    assert f['samples_float'].dtype == np.float32 and list(f['items']) == [8, 9, 9, 9]
    # per-item keys: item i's key depends on i only, not on the batch
    from pds_jax import sampling
    np.testing.assert_array_equal(f['keys'], np.asarray(sampling.sample_keys(3, 8, 4)))
  os.remove(finished.files[1])
  again = shards.run_rounds(folder, {'a': 1}, 10, 4, _images_round(calls), seed=3, what='images')
  assert calls == [0, 1, 2, 1] and again.files == finished.files and len(again.seconds) == 1
  assert '1 to run here, 2 already in' in capsys.readouterr().out
  with pytest.raises(ValueError, match=r"settings differ in \['a'\]"):
    shards.run_rounds(folder, {'a': 2}, 10, 4, _images_round(calls), seed=3)


def test_a_round_that_fails_first_leaves_nothing_behind(tmp_path):
  folder = tmp_path / 'out'

  def broken(r):
    raise ValueError('img_3.png: not a readable image')

  with pytest.raises(ValueError, match='img_3.png'):
    shards.run_rounds(str(folder), {'a': 1}, 10, 4, broken, seed=0)
  assert not folder.exists()  # no run.json to refuse the corrected rerun, no empty folder
  folder.mkdir()
  (folder / 'run.json').write_text(json.dumps({'a': 'an older failed call'}))
  assert shards.run_rounds(str(folder), {'a': 1}, 10, 4, _images_round([]), seed=0) is not None
  assert json.loads((folder / 'run.json').read_text()) == {'a': 1}


def test_ctrl_c_names_the_rounds_on_disk_and_leaves_no_partial_file(tmp_path):
  folder, calls = tmp_path / 'out', []

  def interrupted_in_round_2(r):
    if r.index == 2:
      raise KeyboardInterrupt
    return _images_round(calls)(r)

  with pytest.raises(shards.Interrupted) as info:
    shards.run_rounds(str(folder), {'a': 1}, 20, 4, interrupted_in_round_2, seed=0)
  assert str(info.value) == 'interrupted after 2 of 5 rounds; rerun the same command to resume'
  assert isinstance(info.value, KeyboardInterrupt)
  assert sorted(os.listdir(folder)) == ['run.json', 'samples_0_0.npz', 'samples_1_0.npz']
  shards.run_rounds(str(folder), {'a': 1}, 20, 4, _images_round(calls), seed=0)
  assert calls == [0, 1, 2, 3, 4]


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


def test_output_folder_without_create_leaves_no_folder(tmp_path):
  assert io_utils.output_folder(str(tmp_path / 'new' / 'run'), 'eval', create=False) == str(tmp_path / 'new/run/eval')
  assert list(tmp_path.iterdir()) == []
  (tmp_path / 'kept').mkdir()
  io_utils.output_folder(str(tmp_path / 'kept'), 'eval', create=False)
  assert [p.name for p in tmp_path.iterdir()] == ['kept'] and not any((tmp_path / 'kept').iterdir())


def test_output_folder_errors_name_the_folder(tmp_path):
  (tmp_path / 'file').write_text('')
  for create in (True, False):
    with pytest.raises(ValueError, match='cannot create the output folder .*file/out'):
      io_utils.output_folder(str(tmp_path / 'file'), 'out', create=create)
  if os.geteuid() != 0:  # root writes anywhere
    (tmp_path / 'ro' / 'out').mkdir(parents=True)
    (tmp_path / 'ro' / 'out').chmod(0o500)
    with pytest.raises(ValueError, match='the output folder .*ro/out is not writable'):
      io_utils.output_folder(str(tmp_path / 'ro'), 'out')
