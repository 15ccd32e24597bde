"""The commands that string the stages together (plan_and_preprocess, demo, find_best, model sharing,
doctor); only cli.py sits above them."""
