"""Tests of results.py: the canonical form that decides whether two systems' outputs are equal."""

import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import results  # noqa: E402


class Canon(unittest.TestCase):
    def test_times_in_any_form_and_field_order_agree(self):
        weir = ['{"card_id":"c1","window_start":1795564800000,"window_end":1795564860000,"n":2,"total":3.1}']
        flink = ['{"total":3.1000000000000005,"n":2,"window_end":"2026-11-25T00:01:00","window_start":"2026-11-25T00:00:00","card_id":"c1"}']
        self.assertEqual(results.canon("tumbling_1m", weir), results.canon("tumbling_1m", flink))

    def test_the_last_update_of_a_window_counts_and_a_retraction_removes_it(self):
        updates = [
            '{"card_id":"c1","window_start":0,"window_end":120000,"n":1,"total":1.0}',
            '{"card_id":"c1","window_start":0,"window_end":130000,"n":2,"total":3.0}',
            '{"card_id":"c1","window_start":0,"window_end":120000,"retract":true}',
            "null",
        ]
        self.assertEqual(results.canon("session_2m", updates),
                         ["card_id=c1 window_start=0 window_end=130000 n=2 total=3.0000"])

    def test_rows_are_a_multiset(self):
        rows = ['{"id":"a","amount":1}', '{"id":"a","amount":1}', '{"amount":2.5,"id":"b"}']
        self.assertEqual(results.canon("filter_project", rows),
                         ["amount=1.0000 id=a", "amount=1.0000 id=a", "amount=2.5000 id=b"])

    def test_different_values_are_not_rounded_away(self):
        a = results.canon("tumbling_1m", ['{"card_id":"c","window_start":0,"window_end":60000,"n":1,"total":1.01}'])
        b = results.canon("tumbling_1m", ['{"card_id":"c","window_start":0,"window_end":60000,"n":1,"total":1.02}'])
        self.assertNotEqual(a, b)


class Diff(unittest.TestCase):
    def write(self, lines):
        f = tempfile.NamedTemporaryFile("w", delete=False, suffix=".txt")
        f.write("\n".join(lines) + "\n")
        f.close()
        self.addCleanup(os.unlink, f.name)
        return f.name

    def test_equal_outputs(self):
        self.assertEqual(results.diff(self.write(["a", "b"]), self.write(["a", "b"])), "yes")

    def test_a_missing_duplicated_or_changed_row_is_counted(self):
        ref = self.write(["a", "b", "c"])
        self.assertEqual(results.diff(ref, self.write(["a", "b"])), "no: 1 of 3 rows missing or different, 0 extra")
        self.assertEqual(results.diff(ref, self.write(["a", "b", "c", "c"])),
                         "no: 0 of 3 rows missing or different, 1 extra")
        self.assertEqual(results.diff(ref, self.write(["a", "b", "x"])), "no: 1 of 3 rows missing or different, 1 extra")


class Report(unittest.TestCase):
    def test_ratios_use_weirs_long_run_where_it_ran(self):
        d = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.unlink(os.path.join(d, f)) for f in os.listdir(d)] and os.rmdir(d))
        tsv = os.path.join(d, "r.tsv")
        with open(tsv, "w") as f:
            f.write("system\tcores\tquery\trecords\tseconds\trate\trss_mib\tcpu_s\tequal\n")
            f.write("weir\t1\tq1\t100\t1\t100\t10\t1\treference\n")
            f.write("flink\t1\tq1\t100\t10\t10\t10\t1\tyes\n")
            f.write("weir\t1\tq2\t100\t1\t80\t10\t1\treference\n")
            f.write("flink\t1\tq2\t100\t10\t10\t10\t1\tno: 1 of 3 rows missing or different, 0 extra\n")
            f.write("weir-long\t1\tq1\t1000\t5\t200\t10\t5\tunchecked (Weir alone)\n")
        results.machine = lambda: "test machine"
        results.report(tsv, os.path.join(d, "r"))
        with open(os.path.join(d, "r.md")) as f:
            md = f.read()
        self.assertIn("| query | weir ev/s/core | weir-long ev/s/core | flink ev/s/core | Weir / Flink |", md)
        self.assertIn("| q1 | 100 | 200 | 10 | 20.0x |", md)
        self.assertIn("| q2 | 80 | — | 10 | 8.0x |", md)
        self.assertIn("no: 1 of 3 rows missing", md)


if __name__ == "__main__":
    unittest.main()
