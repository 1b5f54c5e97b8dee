"""hyvid's stages (extract, train-cnn, features, train, hybrid, report, predict) and the `hyvid` CLI."""
