"""The science: pw.x input, the displacement plan, symmetry, forces -> Hessian -> modes,
thermochemistry and the result files. Depends on nothing that stores or moves jobs."""
