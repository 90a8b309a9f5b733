"""A small supernet on digits, so that an epoch takes about a second: shared by the training tests."""
SMALL = dict(max_paths=2, kernels=[3, 5], width_mult=0.5, batch_size=64, eval_archs=2, calib_batches=2)
SMALL_ARGS = ["--max-paths", "2", "--kernels", "3,5", "--width-mult", "0.5", "--batch-size", "64",
              "--eval-archs", "2", "--calib-batches", "2"]


def quiet(_line):
    pass
