# Builds dist\outpost\ (outpost.exe + Python runtime + dependencies + Avro schemas) on a
# Windows build machine, so the servers need no Python. Untested in CI (Linux only);
# the same spec is built and run on Linux by tests/test_service_packaging.py.
#
#   py -3.11 -m venv .venv
#   .venv\Scripts\pip install ".[windows,mssql]" pyinstaller
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build.ps1
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")
$python = if ($env:PYTHON) { $env:PYTHON } else { ".venv\Scripts\python.exe" }
& $python -m agent.avro_codegen   # the encoders generated from the schemas
if ($LASTEXITCODE -ne 0) { throw "generating the Avro encoders failed" }
& $python -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build\pyinstaller packaging\outpost.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }
New-Item -ItemType Directory -Force dist\outpost\docs | Out-Null
Copy-Item docs\operations.md dist\outpost\docs\operations.md    # the operations guide, shipped
& dist\outpost\outpost.exe schemas list | Out-Null
if ($LASTEXITCODE -ne 0) { throw "the built outpost.exe does not run" }
Write-Host "built dist\outpost\ - copy it to C:\Program Files\Outpost\ on the server"
