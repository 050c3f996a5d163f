"""Helpers of the Chromium tests (the fixture is in tests/integration/conftest.py)."""

from __future__ import annotations

from typing import Any

from tests.support.waiting import wait_until


def sign_in(driver: Any, base: str, username: str, password: str) -> None:
    """Sign in on the review page at ``base`` and wait for the worklist."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/login")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, ".login-card button[type=submit]").click()
    wait_until(lambda: "/worklist" in driver.current_url, 30, "the worklist")
