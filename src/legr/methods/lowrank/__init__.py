"""ENC low-rank decomposition (``method: lowrank``, `method.LowRank`): SVD factorization of convolutions and Linears
(`decompose`), the one analysis of a network's singular values (`analysis`), ENC-Map / ENC-Model / ENC-Inf rank
selection for any budget (`select`), members as data (`artifacts`); its config section is `config`."""
