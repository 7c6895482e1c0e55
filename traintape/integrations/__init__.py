"""Adapters for training frameworks, each a one-line change in the training script and each in
its own extra (importing one imports its framework; `import traintape` imports none):

    traintape.integrations.lightning.TraintapeLogger        Lightning `Trainer(logger=...)`, Fabric
    traintape.integrations.transformers.TraintapeCallback   Hugging Face `Trainer(callbacks=[...])`
    traintape.integrations.accelerate.TraintapeTracker      Accelerate `Accelerator(log_with=...)`

Every rank logs into the same run (rank-tagged), at the framework's own steps, and a run ends
`completed` or `failed` as its training did.
"""
