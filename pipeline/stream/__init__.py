"""From Parquet shards to tensors: materialize, the streaming readers (Petastorm, Ray Data), read-time augmentation."""
