"""Test-session audit of the system temp folder (see tmp_audit.py); on PYTHONPATH only in the test session."""
import tmp_audit

tmp_audit.install_from_environment()
