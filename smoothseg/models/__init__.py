"""Trained models: the checkpoint format (:mod:`.checkpoint`), the model store on disk (:mod:`.store`), networks from
plans and checkpoints (:mod:`.build`), and export/install archives (:mod:`.archive`)."""
