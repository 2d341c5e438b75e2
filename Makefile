.PHONY: venv demo test test-all validate
venv:      ; bash scripts/venv.sh
demo:      ; bash scripts/demo.sh
test:      ; bash scripts/test.sh
test-all:  ; bash scripts/test.sh -m "not gpu"
validate:  venv ; .venv/bin/rltune validate --no-model-check recipes/*.yaml  # GPU recipes name models not downloaded here
