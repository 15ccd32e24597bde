"""Connected-component cleanup decided on cross-validation predictions."""
