"""Synthetic data for the thyroid FNAB cytology decision-support project.

* ``synth``: Diff-Quik-like cytology fields per Bethesda-like class, and bad/OOD fields;
* ``wrap``: those images as DICOM (5 IODs x 7 transfer syntaxes) with fake identities;
* ``broken``: a corpus of broken inputs with the daemon's expected response;
* ``dataset``: image folders + labels.csv for case-split training;
* ``python -m dicom_fixtures``: command line for all of the above plus ``bench``.
"""
