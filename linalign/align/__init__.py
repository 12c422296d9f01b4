"""Linear alignment core: streamed sufficient statistics, closed-form ridge solve, AffineMap.

  stats       SufficientStats, Accumulator (sharded), merge, to_host64 / HostStats, merge_all
  folded      FoldedAccumulator (per-fold statistics in one pass), HostAccumulator (float64)
  lambdas     LambdaSpec, choose_lambda, fold_of: the one lambda policy
  solve       float64 host solve(stats, lam, scale=None), RidgePath (one eigh for a grid)
  affine_map  AffineMap (apply, evaluate, one-file safetensors save/load), MapMetadata
  validate    input checks with errors that name the side and row
  sharding    logical axis names and ShardingRules
"""

from linalign.align.affine_map import AffineMap, MapFormatError, MapMetadata, mean_cosine, r2_score
from linalign.align.folded import FoldedAccumulator, HostAccumulator
from linalign.align.lambdas import LambdaSpec, choose_lambda, fold_of
from linalign.align.sharding import ShardingRules
from linalign.align.solve import (RidgePath, SingularSystemError, default_lambda_grid, select_lambda,
                                  select_lambda_gcv, select_lambda_kfold, solve, train_r2)
from linalign.align.stats import (Accumulator, HostStats, SufficientStats, batch_stats, from_arrays,
                                  from_moments, init_stats, merge, merge_all, stats_to_numpy,
                                  std_scale, to_host64, update)
from linalign.align.validate import AlignInputError, check_pair
