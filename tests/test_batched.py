"""Answering many requests together (one encoder pass, one generation batch) gives each the answer it gets alone."""
from __future__ import annotations

import numpy as np

from chex_model.batched import QueryJob, ReportJob, answer_batch


def test_a_mixed_batch_answers_each_job_as_alone(trained_tiny) -> None:
    model, batch = trained_tiny[0], trained_tiny[1]
    images = [(batch.images[i, 0].numpy() * 255).round().astype(np.uint8) for i in range(2)]
    wide = np.pad(images[1], ((0, 0), (20, 20)))  # another aspect ratio: its boxes map through its own crop
    jobs = [
        QueryJob(images[0], ["Left lung", "Pleural effusion"], classes=[("Consolidation", "No consolidation")]),
        ReportJob(images[1], "report", max_new_tokens=12),
        QueryJob(wide, [], [[0.4, 0.5, 0.2, 0.3]], [([0.6, 0.5, 0.2, 0.3], "Right lung")]),
        QueryJob(images[0], [], [[0.5, 0.5, 1.5, 0.2]]),  # a bad box: its own error, the others answered
        ReportJob(images[0], "reference"),
    ]
    out = answer_batch(model, jobs)
    assert isinstance(out[3], ValueError) and "normalized" in str(out[3])
    for job, got in zip(jobs, out):
        if isinstance(job, ReportJob):
            alone = model.report(job.image, job.prompt_set, max_new_tokens=job.max_new_tokens)
            assert [(s.query, s.sentence, s.box) for s in got.sentences] == [(s.query, s.sentence, s.box) for s in alone.sentences]
            assert got.undetermined == alone.undetermined
        elif not isinstance(got, ValueError):
            alone = model.query(job.image, job.prompts, job.boxes, box_prompts=job.box_prompts, classes=job.classes)
            assert [r.sentence for r in got] == [r.sentence for r in alone]
            for g, a in zip(got, alone):
                np.testing.assert_allclose(g.box, a.box, atol=1e-4)
                assert g.probabilities.keys() == a.probabilities.keys()
    assert any(r.sentence for r in out[0]) and out[1].sentences  # the trained model says something
