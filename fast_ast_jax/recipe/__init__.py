"""The small-data recipe as one resumable command (`python -m fast_ast_jax.recipe`):
masked pretraining on the training audio (+ unlabeled folders), fine-tuning an AST from
it, a ToMe student distilled from the fine-tuned model, optionally an export, then a table
of every stage (accuracy, MACs, clips/s).

    clips.py    the user's CSV read and checked, the eval split, durations -> input length
    configs.py  the stage configs (the small-data base recipe) and --set overrides
    workdir.py  W/recipe.json: what each stage was built from; finished stages; --force
    run.py      `run_recipe`: the stages in order, skipping finished ones
    results.py  the result table (W/results.md, W/results.json)
"""
