"""Models: AST (with token merging and pruning) and teachers."""
from fast_ast_jax.models.ast import AST, SIZES, create_ast, grid_shape, model_fields

__all__ = ["AST", "SIZES", "create_ast", "grid_shape", "model_fields"]
