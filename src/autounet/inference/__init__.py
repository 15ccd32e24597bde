"""Sliding-window prediction, fold ensembling, export onto the original grid."""
