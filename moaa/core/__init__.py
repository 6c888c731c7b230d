"""Run plumbing every layer uses: the config system, storage, run layout and manifests, the stage
contract, schemas, the console and job submission."""
