"""The tokenizer stage: train and compare candidates, select one by rule, pack token shards."""
