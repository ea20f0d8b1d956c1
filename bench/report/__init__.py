"""The report: run folders -> reports/<name>/index.md and index.html. It reads only stored rows and run.json
(bench.store), never a study or a measurement: bundle (load and merge runs, the one pivot) -> sections (one
module each) -> render (one document model, two formats) -> build (the folder, its manifest)."""
