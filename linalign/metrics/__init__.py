"""Representational similarity: linear CKA, debiased CKA, SVCCA, mutual k-NN."""

from linalign.metrics.similarity import debiased_cka, linear_cka, mutual_knn, shuffled_baseline, svcca
