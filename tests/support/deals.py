"""Closed-won deals as the fabric publishes them: a customer, its project, three billing
milestones and an invoice, one topic per entity (no order across topics), applied into
local tables joined by foreign keys (PostgreSQL and MariaDB)."""
from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal

import sqlalchemy as sa

from tests.support.inbound import LOOKUPS, customer, event, invoice

ENTITIES = ("BillingMilestone", "Invoice", "Project", "Customer")      # children first
DDL = [
    "CREATE TABLE crm_customer (cust_no VARCHAR(20) PRIMARY KEY, cust_name VARCHAR(60) NOT NULL, company VARCHAR(4),"
    " curr CHAR(3), tax_code VARCHAR(8), credit_lim NUMERIC(18,2))",
    "CREATE TABLE prj_project (prj_code VARCHAR(20) PRIMARY KEY, cust_no VARCHAR(20) NOT NULL, prj_name VARCHAR(100),"
    " company VARCHAR(4), service_line VARCHAR(8), curr CHAR(3), budget NUMERIC(18,2), status VARCHAR(12),"
    " FOREIGN KEY (cust_no) REFERENCES crm_customer (cust_no))",
    "CREATE TABLE prj_milestone (ms_id VARCHAR(30) PRIMARY KEY, prj_code VARCHAR(20) NOT NULL, descr VARCHAR(100),"
    " curr CHAR(3), amount NUMERIC(18,2), due DATE, status VARCHAR(12),"
    " FOREIGN KEY (prj_code) REFERENCES prj_project (prj_code))",
    "CREATE TABLE ar_invoice (inv_no VARCHAR(20) PRIMARY KEY, cust_no VARCHAR(20) NOT NULL, company VARCHAR(4),"
    " curr CHAR(3), tax_code VARCHAR(8), inv_date DATE, net NUMERIC(18,2), tax NUMERIC(18,2), gross NUMERIC(18,2),"
    " status VARCHAR(12), FOREIGN KEY (cust_no) REFERENCES crm_customer (cust_no))",
]
TABLES = {"Customer": "crm_customer", "Project": "prj_project", "BillingMilestone": "prj_milestone",
          "Invoice": "ar_invoice"}
LEGAL = {"field": "legal_entity", "lookup": "legal_entity"}
REVERSE = {
    "Customer": {"tables": [{"table": "crm_customer", "key": "cust_no", "columns": {
        "cust_no": "customer_number", "cust_name": "name", "company": LEGAL, "curr": "currency",
        "tax_code": {"field": "tax_jurisdiction", "lookup": "tax_jurisdiction"}, "credit_lim": "credit_limit"}}]},
    "Project": {"tables": [{"table": "prj_project", "key": "prj_code", "columns": {
        "prj_code": "project_code", "cust_no": "customer_number", "prj_name": "name", "company": LEGAL,
        "service_line": {"field": "service_line", "lookup": "service_line"}, "curr": "currency", "budget": "budget",
        "status": "status"}}]},
    "BillingMilestone": {"tables": [{"table": "prj_milestone", "key": "ms_id", "columns": {
        "ms_id": "milestone_id", "prj_code": "project_code", "descr": "description", "curr": "currency",
        "amount": "amount", "due": "due_date", "status": "status"}}]},
    "Invoice": {"tables": [{"table": "ar_invoice", "key": "inv_no", "columns": {
        "inv_no": "invoice_number", "cust_no": "customer_number", "company": LEGAL, "curr": "currency",
        "tax_code": {"field": "tax_jurisdiction", "lookup": "tax_jurisdiction"}, "inv_date": "invoice_date",
        "net": "net_amount", "tax": "tax_amount", "gross": "total_amount", "status": "status"}}]},
}
SINK_LOOKUPS = {**copy.deepcopy(LOOKUPS), "service_line": {"TEC": "TECH"}}


def create_tables(engine) -> None:
    with engine.begin() as conn:
        for ddl in DDL:
            conn.exec_driver_sql(ddl)


def deal(n: int) -> dict[str, list[dict]]:
    """The events of closed-won deal ``n``, by entity."""
    no, code = f"C-{n:05d}", f"P-{n:05d}"
    project = {"project_code": code, "customer_number": no, "contract_number": None, "name": f"Rollout {n}",
               "legal_entity": "US01", "service_line": "TECH", "currency": "USD", "budget": Decimal("90000.00"),
               "status": "open", "start_date": dt.date(2026, 12, 1), "end_date": None}
    milestones = [{"milestone_id": f"{code}-M{m}", "project_code": code, "description": f"Phase {m}",
                   "currency": "USD", "amount": Decimal("30000.00"), "due_date": dt.date(2027, m, 1),
                   "status": "planned"} for m in (1, 2, 3)]
    return {"Customer": [event(customer(no, f"Customer {n}"), operation="CREATE")],
            "Project": [event(project, operation="CREATE", entity="Project")],
            "BillingMilestone": [event(m, operation="CREATE", entity="BillingMilestone") for m in milestones],
            "Invoice": [event(invoice(f"I-{n:05d}", no), operation="CREATE", entity="Invoice")]}


def counts(engine) -> dict[str, int]:
    """Rows per local table (-1 while a table cannot be read)."""
    found = {}
    with engine.connect() as conn:
        for entity, table in TABLES.items():
            try:
                found[entity] = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
            except sa.exc.SQLAlchemyError:
                found[entity] = -1
    return found
