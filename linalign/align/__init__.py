"""Linear alignment core: streamed sufficient statistics, closed-form ridge solve, AffineMap.

  stats       SufficientStats, init_stats, update, merge, from_arrays, Accumulator (sharded)
  solve       solve(stats, lam), RidgePath (one eigh for a lambda grid), select_lambda, GCV, k-fold CV
  affine_map  AffineMap (apply, evaluate, atomic orbax save/load)
  validate    input checks with errors that name the side and row
  sharding    logical axis names and ShardingRules
"""

from linalign.align.affine_map import AffineMap, MapFormatError, MapMetadata, mean_cosine, r2_score
from linalign.align.sharding import ShardingRules, parse_mesh
from linalign.align.solve import (RidgePath, SingularSystemError, default_lambda_grid, select_lambda,
                                  select_lambda_gcv, select_lambda_kfold, solve, train_r2)
from linalign.align.stats import (Accumulator, SufficientStats, batch_stats, from_arrays, from_moments,
                                  init_stats, merge, stats_to_numpy, update)
from linalign.align.validate import AlignInputError, check_pair
