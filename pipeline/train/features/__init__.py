"""Deep-feature hybrid methods of the survey: LMLE (:mod:`.lmle`), DOS (:mod:`.dos`) and CRL (:mod:`.crl`),
each a :class:`pipeline.train.hooks.MethodHook`; formulas in each module and in ``docs/methods-feature.md``."""
